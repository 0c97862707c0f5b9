"""Where the tenant's models run: model servers (with their replicas and health) and deployments, which say
which version of a registered model a server serves, at what price, and with which canary."""

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, URLValidator
from django.db import models
from django.db.models import Q

from apps.registry.models import ModelVersion, RegisteredModel

QUEUE_PREFIX = "pool."


class ModelServer(models.Model):
    """An inference server the portal calls, reached through one or more replicas.

    Requests for it are queued on `pool.<gpu_pool>`, the Celery queue that workers next to that GPU pool
    consume, so load never crosses pools. The optional auth header's value is a secret the portal must
    send to the server: it is stored encrypted and never shown again.
    """

    class Protocol(models.TextChoices):
        MLFLOW = "mlflow", "MLflow pyfunc scoring server"
        OPENAI = "openai", "OpenAI-compatible"
        KSERVE_V2 = "kserve-v2", "Open Inference Protocol (KServe v2)"

    name = models.CharField(max_length=63, unique=True)
    protocol = models.CharField(max_length=20, choices=Protocol.choices)
    gpu_pool = models.SlugField(max_length=50, help_text="workers of this pool listen on the queue pool.<gpu_pool>")
    accelerator = models.CharField(max_length=100, blank=True, help_text="free text, e.g. 'H100 80GB'")
    request_timeout_seconds = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(1), MaxValueValidator(600)]
    )
    max_concurrency = models.PositiveIntegerField(default=4, validators=[MinValueValidator(1)])
    auth_header_name = models.CharField(max_length=100, blank=True, help_text='e.g. "Authorization"')
    auth_header_value_encrypted = models.TextField(blank=True, default="", editable=False)
    auth_header_changed_at = models.DateTimeField(
        null=True, blank=True, help_text="when the header's value was last set or cleared (the audit trail's clue)"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [("manage_serving", "Can create, change and delete model servers and deployments")]

    def __str__(self) -> str:
        return self.name

    @property
    def queue_name(self) -> str:
        return f"{QUEUE_PREFIX}{self.gpu_pool}"

    @property
    def has_auth_header(self) -> bool:
        return bool(self.auth_header_name and self.auth_header_value_encrypted)


class ServerReplica(models.Model):
    """One address of a server. Health probes record whether it answers, so routing can skip it while it is down.

    `is_up` is None until the first probe: a replica nobody has checked yet is still tried.
    """

    server = models.ForeignKey(ModelServer, on_delete=models.CASCADE, related_name="replicas")
    base_url = models.URLField(max_length=500, validators=[URLValidator(schemes=["http", "https"])])
    is_up = models.BooleanField(null=True, blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["server", "base_url"]
        constraints = [models.UniqueConstraint(fields=["server", "base_url"], name="serving_unique_replica_url")]

    def __str__(self) -> str:
        return self.base_url


class Deployment(models.Model):
    """A registered model put on a server: either whatever an alias points to (so promotion and rollback move
    traffic without touching the deployment) or one fixed version, optionally with a canary version that takes a
    share of the traffic. Deactivated deployments stay as the record of what was served, and at what price."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="deployments")
    alias = models.CharField(max_length=63, blank=True)
    version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="deployments"
    )
    server = models.ForeignKey(ModelServer, on_delete=models.PROTECT, related_name="deployments")
    canary_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="canary_deployments"
    )
    canary_percent = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    price_per_request = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    price_per_1k_tokens = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    price_per_gpu_second = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(alias="") & Q(version__isnull=False)) | (~Q(alias="") & Q(version__isnull=True)),
                name="serving_deployment_alias_xor_version",
            ),
            models.CheckConstraint(
                condition=(Q(canary_version__isnull=True) & Q(canary_percent=0))
                | (Q(canary_version__isnull=False) & Q(canary_percent__gt=0) & Q(canary_percent__lte=100)),
                name="serving_deployment_canary_consistent",
            ),
            models.CheckConstraint(
                condition=Q(price_per_request__gte=0) & Q(price_per_1k_tokens__gte=0) & Q(price_per_gpu_second__gte=0),
                name="serving_deployment_prices_not_negative",
            ),
            models.UniqueConstraint(
                fields=["model", "alias"],
                condition=Q(is_active=True) & ~Q(alias=""),
                name="serving_unique_active_alias_deployment",
            ),
            models.UniqueConstraint(
                fields=["model", "version"],
                condition=Q(is_active=True) & Q(version__isnull=False),
                name="serving_unique_active_version_deployment",
            ),
        ]

    def __str__(self) -> str:
        target = f"@{self.alias}" if self.alias else f" v{self.version.version}" if self.version else ""
        return f"{self.model.name}{target} on {self.server.name}"
