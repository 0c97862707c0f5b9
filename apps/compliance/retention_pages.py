"""The portal's retention page: how long the tenant keeps its records and payloads, and every purge so far.

Owners and compliance officers read it (after their second factor); only owners change the policy. A change
is in the audit log with its actor, like every change to the tenant.
"""

from django import forms
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from apps.accounts.roles import Role
from apps.accounts.selectors import user_role
from apps.accounts.two_factor import otp_required_for_staff
from apps.compliance import selectors
from apps.compliance.payloads import encryption_available
from apps.compliance.retention import retention_policy_update
from apps.tenants.models import RECORD_RETENTION_MAX_DAYS, RECORD_RETENTION_MIN_DAYS, Tenant


class RetentionForm(forms.Form):
    record_retention_days = forms.IntegerField(
        min_value=RECORD_RETENTION_MIN_DAYS,
        max_value=RECORD_RETENTION_MAX_DAYS,
        label="Keep inference records and access events for (days)",
        help_text=f"At least {RECORD_RETENTION_MIN_DAYS} days (six months, EU AI Act Art. 19).",
    )
    payload_retention = forms.BooleanField(required=False, label="Keep each request's input and output, encrypted")
    payload_retention_days = forms.IntegerField(
        min_value=1, max_value=RECORD_RETENTION_MAX_DAYS, label="Keep payloads for (days)"
    )

    def __init__(self, *args, can_encrypt: bool, **kwargs) -> None:
        kwargs.setdefault("auto_id", "retention_%s")
        super().__init__(*args, **kwargs)
        if not can_encrypt:
            self.fields["payload_retention"].disabled = True
            self.fields[
                "payload_retention"
            ].help_text = "Not available: the platform has no PAYLOAD_ENCRYPTION_KEYS configured."


def _initial(tenant: Tenant) -> dict:
    return {
        "record_retention_days": tenant.record_retention_days,
        "payload_retention": tenant.payload_retention,
        "payload_retention_days": tenant.payload_retention_days,
    }


@otp_required_for_staff
@require_http_methods(["GET", "POST"])
def retention(request: HttpRequest) -> HttpResponse:
    if not selectors.report_readers_allowed(request.user):
        return render(request, "403.html", status=403)
    tenant = Tenant.objects.get(pk=request.tenant.pk)  # the routing copy may be cached
    may_change = user_role(request.user) == Role.OWNER
    can_encrypt = encryption_available()
    if request.method == "POST" and not may_change:
        return render(request, "403.html", status=403)
    form = RetentionForm(request.POST or None, initial=_initial(tenant), can_encrypt=can_encrypt)
    if request.method == "POST" and form.is_valid():
        try:
            retention_policy_update(tenant, **form.cleaned_data)
        except ValidationError as error:
            _add_errors(form, error)
        else:
            return redirect("retention")
    context = {
        "tenant": tenant,
        "form": form,
        "may_change": may_change,
        "can_encrypt": can_encrypt,
        **selectors.retention_overview(),
    }
    return render(request, "portal/retention.html", context, status=422 if form.errors else 200)


def _add_errors(form: forms.Form, error: ValidationError) -> None:
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for field, messages in error.message_dict.items():
        form.add_error(field if field in form.fields else None, messages)
