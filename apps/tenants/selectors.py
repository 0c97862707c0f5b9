"""Reads on tenants. The host -> tenant map is cached in Redis and dropped whenever a tenant or domain changes."""

from django.db import connection
from django_tenants.utils import get_public_schema_name, schema_context

from apps.tenants.models import Domain, Tenant
from config.redis import cached_object_get, cached_object_set, cached_objects_forget

_TENANT_FIELDS = (
    "id",
    "schema_name",
    "name",
    "plan",
    "status",
    "created",
    "record_retention_days",
    "payload_retention",
    "payload_retention_days",
)
HOST_CACHE_SECONDS = 300


def _host_cache_key(hostname: str) -> str:
    return f"tenant-host:{hostname}"


def tenant_for_host(hostname: str) -> Tenant | None:
    """The tenant serving `hostname`, or None. One Redis GET when cached; one query otherwise."""
    cached = cached_object_get(_host_cache_key(hostname))
    if cached is None:
        with schema_context(get_public_schema_name()):
            domain = Domain.objects.select_related("tenant").filter(domain=hostname).first()
        cached = {field: getattr(domain.tenant, field) for field in _TENANT_FIELDS} if domain else {}
        cached_object_set(_host_cache_key(hostname), cached, HOST_CACHE_SECONDS)
    if not cached:
        return None
    tenant = Tenant(**cached)
    tenant._state.adding = False
    tenant._state.db = connection.alias
    return tenant


def tenant_host_cache_clear(tenant: Tenant) -> None:
    """Forget every host of `tenant`, so a suspension or a new domain is seen by the next request."""
    with schema_context(get_public_schema_name()):
        host_cache_forget(Domain.objects.filter(tenant_id=tenant.pk).values_list("domain", flat=True))


def host_cache_forget(hostnames) -> None:
    cached_objects_forget(_host_cache_key(host) for host in hostnames)
