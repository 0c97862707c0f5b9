"""Reads on the access audit."""

from datetime import datetime

from django.db.models import QuerySet

from apps.compliance.models import AccessEvent


def access_event_list(*, since: datetime | None = None, reason: str | None = None) -> QuerySet[AccessEvent]:
    """Refused requests of the current tenant, newest first."""
    events = AccessEvent.objects.all()
    if since is not None:
        events = events.filter(occurred_at__gte=since)
    if reason is not None:
        events = events.filter(reason=reason)
    return events
