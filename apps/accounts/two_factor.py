"""Guards for pages that staff may open only with a verified second factor (the admin, the reports).

A session is verified when django-otp's middleware finds a confirmed device of the user in it; that happens
once per sign-in, on the verify page (or at the end of enrolment).
"""

from collections.abc import Callable
from functools import wraps
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import resolve_url
from django.urls import reverse
from django_tenants.utils import get_public_schema_name
from rest_framework.permissions import BasePermission

from apps.accounts.selectors import second_factor_required, totp_device_get


def login_url_for(request: HttpRequest) -> str:
    """The sign-in page of this host: the portal's in a tenant, the admin's on the public host (it has no other)."""
    if connection.schema_name == get_public_schema_name():
        return reverse("admin:login")
    return resolve_url(settings.LOGIN_URL)


def signed_in(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """`login_required` that sends an anonymous visitor to this host's own sign-in page."""

    @wraps(view)
    def guarded(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), login_url_for(request))
        return view(request, *args, **kwargs)

    return guarded


def second_factor_missing(request: HttpRequest) -> bool:
    """True when the signed-in user must use a second factor and this session has not verified one."""
    user = request.user
    if not user.is_authenticated or not second_factor_required(user):
        return False
    is_verified = getattr(user, "is_verified", None)  # set by django-otp's middleware
    return not (is_verified is not None and is_verified())


def second_factor_redirect(request: HttpRequest, *, next_url: str) -> HttpResponseRedirect:
    """To the verify page, or to enrolment for a user who has no authenticator yet; both come back to `next_url`."""
    enrolled = totp_device_get(user=request.user, confirmed=True) is not None
    page = reverse("two_factor_verify" if enrolled else "two_factor_enrol")
    return HttpResponseRedirect(f"{page}?{urlencode({'next': next_url})}")


def otp_required_for_staff(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """For function views: sign-in first, then (for staff roles) a verified second factor, then the view."""

    @wraps(view)
    def guarded(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if second_factor_missing(request):
            return second_factor_redirect(request, next_url=request.get_full_path())
        return view(request, *args, **kwargs)

    return signed_in(guarded)


class OtpRequiredForStaffMixin:
    """`otp_required_for_staff` for class-based views."""

    def dispatch(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        return otp_required_for_staff(super().dispatch)(request, *args, **kwargs)


class SecondFactorVerified(BasePermission):
    """DRF: a staff member's browser session must be verified; API keys are not people and pass."""

    message = "Verify your second factor in the portal first."
    code = "second_factor_required"

    def has_permission(self, request, view) -> bool:
        from apps.apikeys.authentication import KeyPrincipal

        if isinstance(request.auth, KeyPrincipal):
            return True
        return not second_factor_missing(getattr(request, "_request", request))
