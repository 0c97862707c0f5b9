from rest_framework.permissions import SAFE_METHODS, BasePermission

from apps.apikeys.authentication import KeyPrincipal
from apps.compliance.services import access_event_from_request


class HasScopes(BasePermission):
    """A key must carry every scope the view names in `required_scopes`; portal sessions are judged by role."""

    message = "This API key lacks a required scope."
    code = "missing_scope"

    def has_permission(self, request, view) -> bool:
        required = getattr(view, "required_scopes", ())
        if not isinstance(request.auth, KeyPrincipal) or set(required) <= set(request.auth.scopes):
            return True
        missing = sorted(set(required) - set(request.auth.scopes))
        self.message = f"This API key lacks the scope {', '.join(missing)}."
        access_event_from_request(
            request,
            reason="forbidden_scope",
            key_prefix=request.auth.prefix,
            user_id=request.user.pk,
            detail=f"missing {', '.join(missing)}",
        )
        return False


class ScopesByMethodMixin:
    """For views whose reads and writes need different scopes: `read_scopes` for safe methods, else `write_scopes`."""

    read_scopes: tuple[str, ...] = ()
    write_scopes: tuple[str, ...] = ()

    def initial(self, request, *args, **kwargs):
        self.required_scopes = self.read_scopes if request.method in SAFE_METHODS else self.write_scopes
        return super().initial(request, *args, **kwargs)
