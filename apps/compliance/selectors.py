"""Reads on the access audit and the inference record."""

from datetime import datetime

from django.db.models import OuterRef, QuerySet, Subquery
from django.shortcuts import get_object_or_404

from apps.accounts.models import User
from apps.compliance.models import AccessEvent, ComplianceReport, InferenceRecord


def access_event_list(*, since: datetime | None = None, reason: str | None = None) -> QuerySet[AccessEvent]:
    """Refused requests of the current tenant, newest first."""
    events = AccessEvent.objects.all()
    if since is not None:
        events = events.filter(occurred_at__gte=since)
    if reason is not None:
        events = events.filter(reason=reason)
    return events


def _with_user_email(records: QuerySet[InferenceRecord]) -> QuerySet[InferenceRecord]:
    """`user_email` on each record, in the same query: the record keeps a plain user id, not a foreign key."""
    email = User.objects.filter(pk=OuterRef("user_id")).values("email")[:1]
    return records.annotate(user_email=Subquery(email))


def record_list(
    *,
    model_name: str | None = None,
    model_version: int | None = None,
    key_prefix: str | None = None,
    status: str | None = None,
    received_from: datetime | None = None,
    received_to: datetime | None = None,
) -> QuerySet[InferenceRecord]:
    """The current tenant's inference records, newest first, narrowed by each filter that is given.

    `received_from` is inclusive and `received_to` exclusive, so consecutive ranges never count a record twice.
    Each record carries `user_email` (None for key-only or deleted users) without a query per row.
    """
    records = InferenceRecord.objects.order_by("-received_at", "-sequence")
    if model_name:
        records = records.filter(model_name=model_name)
    if model_version is not None:
        records = records.filter(model_version=model_version)
    if key_prefix:
        records = records.filter(key_prefix=key_prefix)
    if status:
        records = records.filter(status=status)
    if received_from is not None:
        records = records.filter(received_at__gte=received_from)
    if received_to is not None:
        records = records.filter(received_at__lt=received_to)
    return _with_user_email(records)


def record_get(*, request_id: str) -> InferenceRecord:
    """Records exist only in the current tenant's schema: another tenant's request id is simply not found."""
    return get_object_or_404(_with_user_email(InferenceRecord.objects.all()), request_id=request_id)


def with_user_email(items: QuerySet, *, field: str = "user_id") -> QuerySet:
    """`user_email` from the tenant's users for each row of `items`, in the same query (`field` is a plain id)."""
    email = User.objects.filter(pk=OuterRef(field)).values("email")[:1]
    return items.annotate(user_email=Subquery(email))


def member_choices() -> list[tuple[int, str]]:
    """(id, email) of the current tenant's users, for filtering the audit by who acted."""
    return list(User.objects.order_by("email").values_list("pk", "email"))


def key_choices() -> list[tuple[str, str]]:
    """(prefix, label) of the current tenant's API keys, revoked ones included: their records stay."""
    from apps.apikeys.models import ApiKey

    keys = ApiKey.objects.order_by("prefix").values_list("prefix", "name")
    return [(prefix, f"{prefix} ({name})") for prefix, name in keys]


def model_name_choices() -> list[tuple[str, str]]:
    """Names of the tenant's registered models: read from the registry, not by scanning the records."""
    from apps.registry.models import RegisteredModel

    return [(name, name) for name in RegisteredModel.objects.order_by("name").values_list("name", flat=True)]


def model_version_choices() -> list[tuple[str, str]]:
    """The version numbers that exist in the tenant's registry, each once."""
    from apps.registry.models import ModelVersion

    numbers = ModelVersion.objects.order_by("version").values_list("version", flat=True).distinct()
    return [(str(number), str(number)) for number in numbers]


def report_readers_allowed(user) -> bool:
    """Reports name every user, key and input hash of the tenant: owners and compliance officers only."""
    from apps.accounts.roles import STAFF_ROLES
    from apps.accounts.selectors import user_role

    return bool(user.is_authenticated and user.is_active and user_role(user) in STAFF_ROLES)


def report_list() -> QuerySet[ComplianceReport]:
    """The current tenant's reports, newest first, without their content (a list needs none of it)."""
    return ComplianceReport.objects.select_related("requested_by").defer("content")


def report_get(*, report_id: int) -> ComplianceReport:
    """Reports live in the tenant's schema: another tenant's id is simply not found (404), like a made-up one."""
    return get_object_or_404(ComplianceReport.objects.select_related("requested_by"), pk=report_id)


def retention_overview() -> dict:
    """What the retention page shows: the purges so far, the chain's start and what is kept now."""
    from django.db.models import Min

    from apps.compliance.models import RetainedPayload, RetentionPurge

    purges = list(RetentionPurge.objects.order_by("-pk")[:20])
    oldest = InferenceRecord.objects.aggregate(oldest=Min("received_at"))["oldest"]
    return {
        "purges": purges,
        "purged_through": purges[0].through_sequence if purges else 0,
        "oldest_record_at": oldest,
        "kept_payloads": RetainedPayload.objects.count(),
    }
