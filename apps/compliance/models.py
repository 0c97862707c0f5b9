from django.db import models


class AccessEvent(models.Model):
    """One refused request (bad or missing credentials, wrong network, rate or budget limit, failed login).

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
        FORBIDDEN_SCOPE = "forbidden_scope", "Scope not granted"
        LOGIN_FAILED = "login_failed", "Login failed"
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
