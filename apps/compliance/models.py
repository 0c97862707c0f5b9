from auditlog.registry import auditlog
from django.conf import settings
from django.db import models


class AccessEvent(models.Model):
    """One access event: a refused request (bad or missing credentials, wrong network, rate or budget limit,
    failed login) or a sign-in worth auditing (logins, second-factor enrolment and use, entering the admin).

    Refusals never reach a view, so without this table a tenant could not see who is probing its API,
    from where, or with which key. Rows arrive in bulk from a Redis buffer (`access_events_flush`), never
    synchronously on the request path, so a flood of bad keys costs one Redis round trip per request.
    """

    class Reason(models.TextChoices):
        MISSING_CREDENTIALS = "missing_credentials", "Missing credentials"
        MALFORMED_KEY = "malformed_key", "Malformed key"
        UNKNOWN_KEY = "unknown_key", "Unknown key"
        REVOKED_KEY = "revoked_key", "Revoked key"
        EXPIRED_KEY = "expired_key", "Expired key"
        NETWORK_NOT_ALLOWED = "network_not_allowed", "Client network not allowed"
        RATE_LIMITED = "rate_limited", "Rate limited"
        BUDGET_EXCEEDED = "budget_exceeded", "Budget exceeded"
        TOKENS_PER_MINUTE = "tokens_per_minute", "Tokens per minute exceeded"
        FORBIDDEN_SCOPE = "forbidden_scope", "Scope not granted"
        LOGIN_FAILED = "login_failed", "Login failed"
        LOGIN = "login", "Logged in"
        ADMIN_LOGIN = "admin_login", "Entered the admin (second factor verified)"
        TOTP_ENROLLED = "totp_enrolled", "Enrolled a second factor"
        TOTP_FAILED = "totp_failed", "Second factor refused"
        RECOVERY_CODE_USED = "recovery_code_used", "Used a recovery code"
        PAYLOAD_VIEWED = "payload_viewed", "Read a kept payload"
        BUFFER_OVERFLOW = "buffer_overflow", "Events dropped while the buffer was full"

    occurred_at = models.DateTimeField(db_index=True)
    reason = models.CharField(max_length=32, choices=Reason.choices)
    key_prefix = models.CharField(max_length=32, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    # Blank only on the synthetic `buffer_overflow` row, which stands for many requests.
    method = models.CharField(max_length=10, blank=True)
    path = models.CharField(max_length=300, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    # A plain id, not a foreign key: a buffered event must still insert after its user is gone.
    user_id = models.PositiveBigIntegerField(null=True, blank=True)
    detail = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-occurred_at"]
        indexes = [models.Index(fields=["reason", "occurred_at"], name="compliance_reason_time_idx")]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.reason} {self.method} {self.path}"


class AppendOnlyError(RuntimeError):
    """An attempt to change or delete a row of the inference record, which only ever grows."""


class InferenceRecordQuerySet(models.QuerySet):
    """Bulk `update()` and `delete()` bypass `save()` and `delete()`, so they are refused here too."""

    def update(self, **kwargs):
        raise AppendOnlyError("the inference record is append-only: rows are never updated")

    def delete(self):
        raise AppendOnlyError("the inference record is append-only: rows are never deleted")

    update.queryset_only = True
    delete.queryset_only = True


class InferenceRecord(models.Model):
    """One authenticated inference request, as the tenant's tamper-evident compliance record.

    Each tenant's records form a hash chain in its own schema: `record_hash` covers every other column and
    the previous record's hash, so an edited, deleted, inserted or reordered record shows up when
    `chain_verify` recomputes the chain. Rows are written only by `records.record_append` and never change:
    the ORM refuses updates and deletes, and a trigger makes the database refuse them as well.
    Only hashes of the input and output are kept, never the payloads. Key, user and deployment are plain
    ids, not foreign keys, so a record never blocks deleting them nor changes with them.
    """

    class Status(models.TextChoices):
        OK = "ok", "OK"
        REFUSED = "refused", "Refused"
        FAILED = "failed", "Failed"
        TIMEOUT = "timeout", "Timed out"
        UNAVAILABLE = "unavailable", "Unavailable"
        WORKER_LOST = "worker_lost", "Worker lost"
        CANCELLED = "cancelled", "Cancelled by the client"

    sequence = models.PositiveBigIntegerField(unique=True)
    request_id = models.CharField(max_length=64, unique=True)
    key_id = models.BigIntegerField(null=True, blank=True)
    key_prefix = models.CharField(max_length=32, blank=True)
    user_id = models.BigIntegerField(null=True, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    model_name = models.CharField(max_length=63)
    model_version = models.PositiveIntegerField(null=True, blank=True)
    alias = models.CharField(max_length=63, blank=True)
    run_id = models.CharField(max_length=64, blank=True)
    deployment_id = models.BigIntegerField(null=True, blank=True)
    server_replica = models.CharField(max_length=300, blank=True)
    received_at = models.DateTimeField()
    dispatched_at = models.DateTimeField(null=True, blank=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices)
    error_code = models.CharField(max_length=64, blank=True)
    input_sha256 = models.CharField(max_length=64)
    output_sha256 = models.CharField(max_length=64, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    upstream_ms = models.PositiveIntegerField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    tokens_estimated = models.BooleanField(default=False)
    cost = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    record_hash = models.CharField(max_length=64, unique=True)

    objects = InferenceRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-sequence"]
        indexes = [
            models.Index(fields=["model_name", "model_version"], name="compliance_ir_model_idx"),
            models.Index(fields=["received_at"], name="compliance_ir_received_idx"),
            models.Index(fields=["key_prefix"], name="compliance_ir_key_prefix_idx"),
            models.Index(fields=["status"], name="compliance_ir_status_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.request_id} {self.model_name} {self.status}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise AppendOnlyError("the inference record is append-only: rows are never updated")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("the inference record is append-only: rows are never deleted")


class ChainHead(models.Model):
    """The end of this tenant's inference record chain: its last sequence number and hash.

    The one mutable row of the chain. `record_append` locks it to serialise appends within the tenant
    (other tenants have their own row in their own schema), and `chain_verify` compares it with the last
    record, so deleting records from the tail of the chain is noticed too.
    """

    SINGLETON_ID = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON_ID, editable=False)
    sequence = models.PositiveBigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default="0" * 64)

    def __str__(self) -> str:
        return f"chain head at {self.sequence}"


class ChainCheckpoint(models.Model):
    """A point up to which this tenant's chain was verified: the sequence and hash a successful walk ended on.

    Re-hashing a million records on every report would take a minute, so a report verifies only what was
    appended since the latest checkpoint (after checking that the checkpoint's own record is unchanged) and
    says which checkpoint it trusted. A full walk (`chain_verify()`, `manage.py verify_audit_chain`) still
    re-checks everything from the first record and seals a fresh checkpoint; `walked_from` is 0 for those.
    """

    sequence = models.PositiveBigIntegerField()
    record_hash = models.CharField(max_length=64)
    walked_from = models.PositiveBigIntegerField(help_text="0 for a full walk, else the checkpoint it started from.")
    sealed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-sequence", "-pk"]

    def __str__(self) -> str:
        return f"chain verified up to {self.sequence}"


@auditlog.register()
class RetentionPurge(models.Model):
    """One purge of what the tenant's retention policy no longer keeps, and the seal that keeps the chain checkable.

    Records leave only from the start of the chain, records 1 to `through_sequence`: the walk then starts from
    `through_hash` (the last purged record's hash, which the first kept record names as its predecessor), so the
    records that remain verify exactly as before. A purge first walks what it is about to delete and refuses if
    that is broken, so a seal always vouches for records that were intact when they went. Seals are chained to
    each other (`seal_hash` covers the row and the previous seal) and append-only like the records, and the
    database lets a record be deleted only when a seal covers it. Each row is in the audit log.
    """

    ran_at = models.DateTimeField()
    record_retention_days = models.PositiveIntegerField()
    cutoff = models.DateTimeField(help_text="Records and access events received before this were purged.")
    first_sequence = models.PositiveBigIntegerField(help_text="The first record this purge removed (0: none).")
    through_sequence = models.PositiveBigIntegerField(help_text="Every record up to this one is gone (0: none).")
    through_hash = models.CharField(max_length=64)
    records_purged = models.PositiveBigIntegerField()
    purged_digest = models.CharField(
        max_length=64, help_text="SHA-256 of the purged records' hashes, in order: a kept export can be matched."
    )
    oldest_received_at = models.DateTimeField(null=True, blank=True)
    newest_received_at = models.DateTimeField(null=True, blank=True)
    access_events_purged = models.PositiveBigIntegerField()
    payload_cutoff = models.DateTimeField(null=True, blank=True)
    payloads_purged = models.PositiveBigIntegerField()
    records_withheld = models.CharField(
        max_length=300, blank=True, help_text="Why records past their retention were kept (a broken chain)."
    )
    prev_seal_hash = models.CharField(max_length=64)
    seal_hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["-pk"]

    def __str__(self) -> str:
        return f"purge of {self.ran_at:%Y-%m-%d %H:%M}: records through {self.through_sequence}"


class RetainedPayload(models.Model):
    """A request's input and output, kept encrypted when the tenant asks for it (off by default).

    Fernet with keys from `PAYLOAD_ENCRYPTION_KEYS`, never in the database; the record keeps the hashes, so a
    decrypted payload can be proven to be the one that was processed. Purged on a shorter schedule of its own.
    """

    request_id = models.CharField(max_length=64, unique=True)
    stored_at = models.DateTimeField(db_index=True)
    key_id = models.CharField(max_length=16, help_text="Which encryption key sealed it (a fingerprint).")
    ciphertext = models.BinaryField()

    class Meta:
        ordering = ["-stored_at"]

    def __str__(self) -> str:
        return f"payload of {self.request_id}"


@auditlog.register(
    include_fields=["period_start", "period_end", "model_name", "key_prefix", "requested_by", "content_sha256"]
)
class ComplianceReport(models.Model):
    """A compliance report on one period (and optionally one model or key), generated by a Celery task.

    `content` is the report as data and `content_sha256` the SHA-256 of its canonical JSON, so a downloaded
    copy can be checked against the portal. The audit log keeps who asked for which period and filters, and
    the hash the report ended with; status and progress changes are too chatty to be worth an audit entry.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    period_start = models.DateTimeField()
    period_end = models.DateTimeField(help_text="Exclusive: consecutive reports never count a record twice.")
    model_name = models.CharField(max_length=63, blank=True)
    key_prefix = models.CharField(max_length=32, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)
    content = models.JSONField(null=True, blank=True)
    content_sha256 = models.CharField(max_length=64, blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created", "-pk"]

    def __str__(self) -> str:
        return f"report {self.pk}: {self.period_start:%Y-%m-%d} to {self.period_end:%Y-%m-%d} ({self.status})"


class ComplianceReportInputHashes(models.Model):
    """The distinct input hashes of a report's period, kept apart from its content.

    A month can list a million hashes (67 MB): inside `content` they would be parsed into `jsonb`, compressed and
    read back with every report. Here they are one value, the canonical JSON of the sorted list as UTF-8 bytes,
    stored uncompressed (hex gains nothing from compression) so a download can read it slice by slice. The content
    keeps their count and the SHA-256 of these bytes, so the report's own hash still covers the list.
    """

    report = models.OneToOneField(
        ComplianceReport, on_delete=models.CASCADE, primary_key=True, related_name="input_hashes"
    )
    hashes = models.BinaryField(help_text="Canonical JSON of the sorted list of distinct input hashes (UTF-8).")

    def __str__(self) -> str:
        return f"input hashes of report {self.report_id}"
