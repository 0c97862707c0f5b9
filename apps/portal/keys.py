"""The API keys page of the portal: thin views over the key services and selectors.

A new or rotated secret is rendered once, in the response to the POST that made it, with `no-store`:
never a redirect (the secret would travel in a URL or through the session/messages store), never logged.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_http_methods, require_POST

from apps.apikeys import services
from apps.apikeys.models import ApiKey
from apps.apikeys.selectors import apikey_get_for, apikey_list_for
from apps.portal.forms import KeyCreateForm, RotateForm

MANAGE_OWN_KEYS = "apikeys.manage_own_keys"


@login_required
@permission_required(MANAGE_OWN_KEYS, raise_exception=True)
@require_http_methods(["GET", "POST"])
@sensitive_variables("secret")
def keys(request: HttpRequest) -> HttpResponse:
    """The keys the member may see, and the form that creates one (the secret page answers a valid POST)."""
    form = KeyCreateForm(request.POST if request.method == "POST" else None, actor=request.user)
    if form.is_bound and form.is_valid():
        try:
            key, secret = services.apikey_create(actor=request.user, **form.service_arguments())
        except (ValidationError, PermissionDenied) as error:
            form.add_service_error(error)
        else:
            return _secret_page(request, key, secret, created=True)
    return _keys_page(request, form, status=400 if form.errors else 200)


@require_POST
@login_required
@permission_required(MANAGE_OWN_KEYS, raise_exception=True)
@sensitive_variables("secret")
def key_rotate(request: HttpRequest, key_id: int) -> HttpResponse:
    """A new secret for the key, shown once; the old one may keep working for a chosen grace period."""
    key = apikey_get_for(user=request.user, key_id=key_id)
    form = RotateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a valid grace period.")
        return _keys_page(request, status=400)
    try:
        key, secret = services.apikey_rotate(actor=request.user, key=key, **form.cleaned_data)
    except (ValidationError, PermissionDenied) as error:
        messages.error(request, _message_of(error))
        return _keys_page(request, status=400)
    return _secret_page(request, key, secret, created=False)


@login_required
@permission_required(MANAGE_OWN_KEYS, raise_exception=True)
@require_http_methods(["GET", "POST"])
def key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    """GET asks for confirmation (a link must never revoke); POST revokes for good."""
    key = apikey_get_for(user=request.user, key_id=key_id)
    if request.method == "GET":
        return render(request, "portal/key_revoke_confirm.html", {"key": key})
    try:
        key = services.apikey_revoke(actor=request.user, key=key)
    except (ValidationError, PermissionDenied) as error:
        messages.error(request, _message_of(error))
    else:
        messages.success(request, f"Key {key.name} ({key.prefix}) is revoked.")
    return redirect("keys")


def _keys_page(request: HttpRequest, form: KeyCreateForm | None = None, *, status: int = 200) -> HttpResponse:
    context = {
        "keys": apikey_list_for(user=request.user),
        "form": form or KeyCreateForm(actor=request.user),
        "rotate_form": RotateForm(),
        "now": timezone.now(),
    }
    return render(request, "portal/keys.html", context, status=status)


@sensitive_variables("secret")
def _secret_page(request: HttpRequest, key: ApiKey, secret: str, *, created: bool) -> HttpResponse:
    response = render(request, "portal/key_created.html", {"key": key, "secret": secret, "created": created})
    add_never_cache_headers(response)
    return response


def _message_of(error: ValidationError | PermissionDenied) -> str:
    if isinstance(error, ValidationError):
        return " ".join(error.messages)
    return str(error) or "Your role does not allow this."
