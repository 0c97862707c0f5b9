from django.http import HttpRequest


def portal(request: HttpRequest) -> dict:
    """The current tenant, for the layout's header (None on the public site)."""
    from django_tenants.utils import get_public_schema_name

    tenant = getattr(request, "tenant", None)
    if tenant is None or tenant.schema_name == get_public_schema_name():
        return {"current_tenant": None}
    return {"current_tenant": tenant}
