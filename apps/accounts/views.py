"""The second-factor pages: enrol an authenticator app, verify a session, renew recovery codes; an owner resets a
member's second factor. The first three serve platform staff on the public host too."""

from base64 import b32encode

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from apps.accounts import services
from apps.accounts.forms import CodeForm
from apps.accounts.selectors import (
    member_get,
    recovery_codes_left,
    second_factor_enrolled,
    second_factor_required,
    totp_device_get,
)
from apps.accounts.two_factor import otp_required_for_staff, signed_in


def _next_url(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    host, https = request.get_host(), request.is_secure()
    return target if url_has_allowed_host_and_scheme(target, {host}, require_https=https) else reverse("admin:index")


def _refused_status(form: CodeForm, result: services.SecondFactorResult) -> int:
    if result.wait_seconds:
        form.add_error("code", f"Too many wrong codes. Try again in {result.wait_seconds} seconds.")
        return 429
    form.add_error("code", "That code is not valid.")
    return 400


@signed_in
def two_factor_enrol(request: HttpRequest) -> HttpResponse:
    if not second_factor_required(request.user):
        return render(request, "403.html", status=403)
    next_url = _next_url(request)
    if totp_device_get(user=request.user, confirmed=True) is not None:
        context = {
            "codes_left": recovery_codes_left(user=request.user),
            "verified": request.user.is_verified(),
            "next": next_url,
        }
        return render(request, "portal/two_factor.html", context)
    device = services.totp_enrolment_start(user=request.user)
    form = CodeForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        result = services.totp_enrolment_confirm(request=request, user=request.user, code=form.cleaned_data["code"])
        if result.verified:
            context = {"codes": result.recovery_codes, "next": next_url, "enrolled": True}
            return render(request, "portal/two_factor_recovery_codes.html", context)
        status = _refused_status(form, result)
    context = {
        "form": form,
        "config_url": device.config_url,
        "secret": b32encode(device.bin_key).decode(),
        "next": next_url,
    }
    return render(request, "portal/two_factor_enrol.html", context, status=status)


@signed_in
def two_factor_verify(request: HttpRequest) -> HttpResponse:
    next_url = _next_url(request)
    if not second_factor_required(request.user) or request.user.is_verified():
        return HttpResponseRedirect(next_url)
    if totp_device_get(user=request.user, confirmed=True) is None:
        return redirect(f"{reverse('two_factor_enrol')}?{request.GET.urlencode()}")
    form = CodeForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        result = services.second_factor_verify(request=request, user=request.user, code=form.cleaned_data["code"])
        if result.verified:
            return HttpResponseRedirect(next_url)
        status = _refused_status(form, result)
    return render(request, "portal/two_factor_verify.html", {"form": form, "next": next_url}, status=status)


@require_POST
@otp_required_for_staff
def recovery_codes_regenerate(request: HttpRequest) -> HttpResponse:
    if not second_factor_required(request.user):
        return render(request, "403.html", status=403)
    codes = services.recovery_codes_regenerate(actor=request.user)
    messages.success(request, "New recovery codes are ready; the old ones no longer work.")
    return render(request, "portal/two_factor_recovery_codes.html", {"codes": codes, "next": _next_url(request)})


@require_http_methods(["GET", "POST"])
@otp_required_for_staff
@permission_required("accounts.manage_members", raise_exception=True)
def member_second_factor_reset(request: HttpRequest, member_id: int) -> HttpResponse:
    """GET asks for confirmation (a link must never reset anything); POST removes the member's devices."""
    member = member_get(member_id=member_id)
    if request.method == "GET":
        context = {
            "member": member,
            "enrolled": second_factor_enrolled(user=member),
            "has_app": totp_device_get(user=member, confirmed=True) is not None,
            "codes_left": recovery_codes_left(user=member),
        }
        return render(request, "portal/member_two_factor_reset_confirm.html", context)
    try:
        services.member_second_factor_reset(actor=request.user, member=member)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"{member.email} enrols a new authenticator app at their next entry to the admin.")
    return redirect("members")
