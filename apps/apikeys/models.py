from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models


class Scope(models.TextChoices):
    INFERENCE = "inference", "Inference"
    MODELS_READ = "models:read", "Read models"
    MODELS_WRITE = "models:write", "Write models"
    REPORTS_READ = "reports:read", "Read reports"
    KEYS_MANAGE = "keys:manage", "Manage keys"


class ApiKey(models.Model):
    """A scoped credential of one member, for programs. Only a keyed hash of the secret is stored.

    The prefix is public (shown in lists and logs) and finds the row; the secret is checked against
    `secret_hash`, or during a rotation's grace period also against `previous_secret_hash`.
    Its own limits (requests and tokens per minute, monthly spend) apply together with the tenant's plan.
    """

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_keys")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    prefix = models.CharField(max_length=24, unique=True)
    secret_hash = models.CharField(max_length=64)
    previous_secret_hash = models.CharField(max_length=64, blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    scopes = ArrayField(models.CharField(max_length=20, choices=Scope.choices), default=list)
    model_pins = models.JSONField(default=dict, blank=True, help_text="model name -> version it is locked to")
    allowed_networks = ArrayField(models.CharField(max_length=49), default=list, blank=True)
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="overrides the plan's per-key limit"
    )
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="overrides the plan's per-key token limit; empty: the plan's default"
    )
    monthly_spend_limit = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, help_text="spend budget per calendar month (UTC)"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created"]
        permissions = [
            ("manage_own_keys", "Can create, rotate and revoke their own API keys"),
            ("manage_all_keys", "Can create, rotate and revoke every API key of the tenant"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None
