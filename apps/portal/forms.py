from datetime import UTC, datetime, time, timedelta

from django import forms
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.utils import timezone

from apps.accounts.models import User
from apps.accounts.roles import Role
from apps.api.errors import ApiError
from apps.apikeys.models import Scope
from apps.registry.models import ModelVersion, RegisteredModel
from apps.serving.models import ModelServer


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
    tokens_per_minute = forms.IntegerField(
        min_value=0,
        max_value=1_000_000_000,
        required=False,
        label="Tokens per minute",
        help_text="Prompt and completion tokens of the OpenAI-compatible API. Empty: the plan's.",
    )
    monthly_spend_limit = forms.DecimalField(
        min_value=0,
        max_digits=12,
        decimal_places=6,
        required=False,
        label="Monthly spend limit",
        help_text="At the deployments' prices, per calendar month (UTC). Empty: no limit of its own.",
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
            for field in (
                "name",
                "scopes",
                "model_pins",
                "allowed_networks",
                "expires_at",
                "requests_per_minute",
                "tokens_per_minute",
                "monthly_spend_limit",
            )
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


# --- models, servers, deployments ------------------------------------------------------------------------------

ServiceError = ValidationError | ApiError | PermissionDenied


def service_error_message(error: ServiceError) -> str:
    """What a refusal of a service says to a person, whichever kind of refusal it is."""
    if isinstance(error, ApiError):
        return str(error.detail)
    if isinstance(error, ValidationError):
        return " ".join(error.messages)
    return str(error) or "Your role does not allow this."


def service_error_status(error: ServiceError) -> int:
    if isinstance(error, ApiError):
        return error.status_code
    return 403 if isinstance(error, PermissionDenied) else 400


class ServiceErrorsMixin:
    """Shows a refusal of a service next to the field it concerns (by its code), else above the form."""

    service_error_fields: dict[str, str] = {}

    def add_service_error(self, error: ServiceError) -> None:
        code = error.error_code if isinstance(error, ApiError) else getattr(error, "code", None)
        field = self.service_error_fields.get(code)
        self.add_error(field if field in self.fields else None, service_error_message(error))


class ModelCreateForm(ServiceErrorsMixin, forms.Form):
    name = forms.CharField(
        max_length=63, help_text="Lowercase letters, digits and single hyphens; the name clients call it by."
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    service_error_fields = {"invalid_model_name": "name", "name_taken": "name"}


class VersionUploadForm(ServiceErrorsMixin, forms.Form):
    file = forms.FileField(
        label="MLflow model package",
        help_text="A .zip or .tar.gz of an MLflow model directory (with its MLmodel file).",
        widget=forms.ClearableFileInput(attrs={"accept": ".zip,.tar,.gz,.tgz"}),
    )

    service_error_fields = {"invalid_model_package": "file"}

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > settings.MODEL_UPLOAD_MAX_BYTES:
            raise forms.ValidationError(f"The package is larger than {settings.MODEL_UPLOAD_MAX_BYTES} bytes.")
        return upload


class PromoteForm(ServiceErrorsMixin, forms.Form):
    version = forms.TypedChoiceField(coerce=int, choices=())
    alias = forms.CharField(max_length=63, initial="champion")
    reason = forms.CharField(max_length=500, required=False)

    service_error_fields = {"invalid_alias": "alias", "version_archived": "version", "not_found": "version"}

    def __init__(self, *args, versions: list[ModelVersion], **kwargs) -> None:
        kwargs.setdefault("auto_id", "promote_%s")
        super().__init__(*args, **kwargs)
        ready = [version for version in versions if version.status == ModelVersion.Status.READY]
        self.fields["version"].choices = [(version.version, f"v{version.version}") for version in ready]

    def clean_alias(self) -> str:
        return self.cleaned_data["alias"].strip()


class RollbackForm(ServiceErrorsMixin, forms.Form):
    alias = forms.ChoiceField(choices=())
    reason = forms.CharField(max_length=500, error_messages={"required": "Say why you roll back."})

    service_error_fields = {"reason_required": "reason", "nothing_to_roll_back": "alias"}

    def __init__(self, *args, aliases: list[str], **kwargs) -> None:
        kwargs.setdefault("auto_id", "rollback_%s")
        super().__init__(*args, **kwargs)
        self.fields["alias"].choices = [(alias, alias) for alias in aliases]
        if "champion" in aliases:
            self.fields["alias"].initial = "champion"


class ArchiveForm(forms.Form):
    reason = forms.CharField(max_length=500, required=False)


class ServerCreateForm(ServiceErrorsMixin, forms.Form):
    """Parses a new server's fields; the header value is write-only: the widget never renders it back."""

    name = forms.CharField(max_length=63)
    protocol = forms.ChoiceField(choices=ModelServer.Protocol.choices)
    gpu_pool = forms.CharField(
        max_length=50, label="GPU pool", help_text="Workers next to the pool listen on the queue pool.<gpu pool>."
    )
    replica_urls = forms.CharField(
        label="Replica URLs",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "http://10.0.0.5:8080"}),
        help_text="One http:// or https:// address per line.",
    )
    accelerator = forms.CharField(max_length=100, required=False, help_text="Free text, e.g. H100 80GB.")
    request_timeout_seconds = forms.IntegerField(min_value=1, max_value=600, initial=30, label="Timeout (seconds)")
    auth_header_name = forms.CharField(
        max_length=100, required=False, label="Auth header name", widget=forms.TextInput(attrs={"autocomplete": "off"})
    )
    auth_header_value = forms.CharField(
        max_length=4096,
        required=False,
        label="Auth header value",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted and never shown again.",
    )

    service_error_fields = {
        "invalid_server_name": "name",
        "name_taken": "name",
        "invalid_protocol": "protocol",
        "invalid_gpu_pool": "gpu_pool",
        "invalid_accelerator": "accelerator",
        "invalid_timeout": "request_timeout_seconds",
        "invalid_replica_url": "replica_urls",
        "no_replicas": "replica_urls",
        "too_many_replicas": "replica_urls",
        "invalid_auth_header": "auth_header_name",
    }

    def clean_replica_urls(self) -> list[str]:
        return _lines(self.cleaned_data["replica_urls"])


class DeploymentCreateForm(ServiceErrorsMixin, forms.Form):
    """Parses a new deployment: version numbers become the model's versions; the service judges the rest."""

    model = forms.ModelChoiceField(queryset=RegisteredModel.objects.order_by("name"), empty_label=None)
    alias = forms.CharField(
        max_length=63,
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "champion"}),
        help_text="Follows promotions and rollbacks.",
    )
    version = forms.IntegerField(min_value=1, required=False, label="or version", help_text="One fixed version.")
    server = forms.ModelChoiceField(queryset=ModelServer.objects.order_by("name"), empty_label=None)
    canary_version = forms.IntegerField(min_value=1, required=False, label="Canary version")
    canary_percent = forms.IntegerField(min_value=0, max_value=100, initial=0, required=False, label="Canary %")
    price_per_request = forms.DecimalField(min_value=0, max_digits=12, decimal_places=6, required=False, initial=0)
    price_per_1k_tokens = forms.DecimalField(
        min_value=0, max_digits=12, decimal_places=6, required=False, initial=0, label="Price per 1k tokens"
    )
    price_per_gpu_second = forms.DecimalField(
        min_value=0, max_digits=12, decimal_places=6, required=False, initial=0, label="Price per GPU second"
    )

    service_error_fields = {
        "alias_or_version": "alias",
        "invalid_alias": "alias",
        "invalid_version": "version",
        "invalid_canary": "canary_percent",
        "unknown_server": "server",
    }

    def clean(self) -> dict:
        cleaned = super().clean()
        model = cleaned.get("model")
        if model is not None:
            for field in ("version", "canary_version"):
                number = cleaned.get(field)
                if number is None:
                    continue
                cleaned[field] = ModelVersion.objects.filter(model=model, version=number).first()
                if cleaned[field] is None:
                    self.add_error(field, f"{model.name} has no version {number}.")
        return cleaned

    def service_arguments(self) -> dict:
        """The keyword arguments of `deployment_create` (without the actor)."""
        data = self.cleaned_data
        arguments = {field: data[field] for field in ("model", "server", "version", "canary_version")}
        arguments["alias"] = data["alias"].strip()
        arguments["canary_percent"] = data["canary_percent"] or 0
        for field in ("price_per_request", "price_per_1k_tokens", "price_per_gpu_second"):
            arguments[field] = data[field] if data[field] is not None else 0
        return arguments
