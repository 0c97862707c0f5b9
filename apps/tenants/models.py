from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django_tenants.models import DomainMixin, TenantMixin

# Art. 19 of the EU AI Act asks providers to keep the logs of high-risk systems for at least six months.
RECORD_RETENTION_MIN_DAYS = 183
RECORD_RETENTION_MAX_DAYS = 3650
PAYLOAD_RETENTION_DEFAULT_DAYS = 30


class Tenant(TenantMixin):
    """A customer organisation. Its slug is its PostgreSQL schema and the first label of its host."""

    class Plan(models.TextChoices):
        FREE = "free", "Free"
        TEAM = "team", "Team"
        ENTERPRISE = "enterprise", "Enterprise"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    name = models.CharField(max_length=100)
    plan = models.CharField(max_length=20, choices=Plan.choices, default=Plan.FREE)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    created = models.DateTimeField(auto_now_add=True)
    record_retention_days = models.PositiveIntegerField(
        default=RECORD_RETENTION_MIN_DAYS,
        validators=[MinValueValidator(RECORD_RETENTION_MIN_DAYS), MaxValueValidator(RECORD_RETENTION_MAX_DAYS)],
        help_text="Inference records and access events older than this are purged (at least six months).",
    )
    payload_retention = models.BooleanField(
        default=False,
        help_text="Keep each request's input and output, encrypted with PAYLOAD_ENCRYPTION_KEYS.",
    )
    payload_retention_days = models.PositiveIntegerField(
        default=PAYLOAD_RETENTION_DEFAULT_DAYS,
        validators=[MinValueValidator(1), MaxValueValidator(RECORD_RETENTION_MAX_DAYS)],
        help_text="Kept payloads older than this are purged; never longer than the records they belong to.",
    )

    auto_create_schema = True
    auto_drop_schema = True

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.schema_name})"

    def clean(self) -> None:
        super().clean()
        if self.payload_retention_days > self.record_retention_days:
            raise ValidationError(
                {"payload_retention_days": "Payloads cannot be kept longer than the records they belong to."}
            )

    @property
    def slug(self) -> str:
        return self.schema_name

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class Domain(DomainMixin):
    """A host name routed to a tenant (`<slug>.<PORTAL_DOMAIN>`, or the public site's own)."""

    def __str__(self) -> str:
        return self.domain
