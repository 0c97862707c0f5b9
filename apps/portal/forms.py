from datetime import UTC, datetime, time, timedelta

from django import forms
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.utils import timezone

from apps.accounts.models import User
from apps.accounts.roles import Role
from apps.apikeys.models import Scope


class InviteForm(forms.Form):
    email = forms.EmailField()
    full_name = forms.CharField(max_length=150, required=False, label="Name")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.DEVELOPER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


GRACE_CHOICES = [(0, "None"), (3600, "1 hour"), (24 * 3600, "24 hours"), (7 * 24 * 3600, "7 days")]

# Which field shows a service refusal, by the ValidationError's code; the rest go above the form.
_SERVICE_ERROR_FIELDS = {
    "no_scope": "scopes",
    "unknown_scope": "scopes",
    "invalid_pins": "model_pins",
    "invalid_network": "allowed_networks",
    "invalid_expiry": "expires_on",
    "owner_inactive": "owner",
}


def _key_holders() -> QuerySet[User]:
    """Active members whose role may hold keys: the owner select offers nobody the service would refuse."""
    return (
        User.objects.filter(
            is_active=True,
            groups__permissions__content_type__app_label="apikeys",
            groups__permissions__codename="manage_own_keys",
        )
        .distinct()
        .order_by("email")
    )


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


class KeyCreateForm(forms.Form):
    """Parses the browser's fields into `apikey_create` arguments; the service judges what they mean."""

    name = forms.CharField(max_length=100)
    owner = forms.ModelChoiceField(
        queryset=User.objects.none(), required=False, empty_label=None, help_text="Who holds the key."
    )
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "A key needs at least one scope."},
    )
    expires_in_days = forms.IntegerField(
        min_value=1, max_value=3650, required=False, label="Expires in (days)", help_text="Empty: never."
    )
    expires_on = forms.DateField(
        required=False,
        label="or expires on",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="The key stops working at 00:00 UTC that day.",
    )
    model_pins = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "fraud-detector=3"}),
        help_text="One model=version per line.",
    )
    allowed_networks = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "10.0.0.0/8"}),
        label="Allowed networks",
        help_text="One CIDR per line. Empty: any network.",
    )
    requests_per_minute = forms.IntegerField(
        min_value=1, max_value=1_000_000, required=False, label="Requests per minute", help_text="Empty: the plan's."
    )

    def __init__(self, *args, actor: User, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if actor.has_perm("apikeys.manage_all_keys"):
            self.fields["owner"].queryset = _key_holders()
            self.fields["owner"].initial = actor.pk
        else:
            del self.fields["owner"]

    def clean_model_pins(self) -> dict[str, str]:
        pins = {}
        for line in _lines(self.cleaned_data["model_pins"]):
            model, sep, version = (part.strip() for part in line.partition("="))
            if not sep or not model or not version:
                raise forms.ValidationError(f"{line!r} is not model=version.")
            if model in pins:
                raise forms.ValidationError(f"{model!r} is pinned twice.")
            pins[model] = version
        return pins

    def clean_allowed_networks(self) -> list[str]:
        return _lines(self.cleaned_data["allowed_networks"])

    def clean(self) -> dict:
        cleaned = super().clean()
        days, day = cleaned.get("expires_in_days"), cleaned.get("expires_on")
        if days and day:
            raise forms.ValidationError("Give the expiry in days or as a date, not both.")
        if days:
            cleaned["expires_at"] = timezone.now() + timedelta(days=days)
        elif day:
            cleaned["expires_at"] = datetime.combine(day, time.min, tzinfo=UTC)
        else:
            cleaned["expires_at"] = None
        return cleaned

    def service_arguments(self) -> dict:
        """The keyword arguments of `apikey_create` (without the actor)."""
        data = self.cleaned_data
        arguments = {
            field: data[field]
            for field in ("name", "scopes", "model_pins", "allowed_networks", "expires_at", "requests_per_minute")
        }
        if data.get("owner") is not None:
            arguments["owner"] = data["owner"]
        return arguments

    def add_service_error(self, error: ValidationError | PermissionDenied) -> None:
        """Show a refusal of the service next to the field it concerns (by its code), else above the form."""
        field = _SERVICE_ERROR_FIELDS.get(getattr(error, "code", None))
        if isinstance(error, PermissionDenied):
            error = ValidationError(str(error) or "You may not do this.", code="permission_denied")
        self.add_error(field if field in self.fields else None, error)


class RotateForm(forms.Form):
    grace_seconds = forms.TypedChoiceField(
        choices=GRACE_CHOICES,
        coerce=int,
        initial=0,
        label="Old secret keeps working for",
    )
