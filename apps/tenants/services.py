"""Writes on tenants: sign-up, the public site's own tenant, suspension."""

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from auditlog.context import set_actor
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django_tenants.utils import get_public_schema_name, schema_context, tenant_context

from apps.tenants.models import Domain, Tenant

# Letters and digits only: the slug is both a PostgreSQL schema name and a DNS label.
SLUG_RE = re.compile(r"^[a-z][a-z0-9]{2,29}$")


@dataclass(frozen=True)
class SignupResult:
    tenant: Tenant
    owner: "object"
    login_url: str


def tenant_url(tenant: Tenant, path: str = "/") -> str:
    """Absolute URL of `path` on the tenant's host, built from PORTAL_BASE_URL's scheme and port."""
    base = urlsplit(settings.PORTAL_BASE_URL)
    host = f"{tenant.schema_name}.{settings.PORTAL_DOMAIN}"
    netloc = f"{host}:{base.port}" if base.port else host
    return urlunsplit((base.scheme, netloc, path, "", ""))


def tenant_slug_validate(slug: str) -> None:
    if not SLUG_RE.match(slug):
        raise ValidationError("Use 3 to 30 lowercase letters and digits, starting with a letter.", code="invalid_slug")
    if slug in settings.RESERVED_TENANT_SLUGS or slug.startswith("pg"):
        raise ValidationError("This name is reserved.", code="reserved_slug")
    if Tenant.objects.filter(schema_name=slug).exists():
        raise ValidationError("This name is taken.", code="slug_taken")


def public_tenant_ensure() -> Tenant:
    """The public site (landing, sign-up, platform admin) is itself a tenant row on PORTAL_DOMAIN."""
    with schema_context(get_public_schema_name()):
        tenant, _ = Tenant.objects.get_or_create(
            schema_name=get_public_schema_name(),
            defaults={"name": "Platform", "plan": Tenant.Plan.ENTERPRISE},
        )
        Domain.objects.get_or_create(domain=settings.PORTAL_DOMAIN, defaults={"tenant": tenant, "is_primary": True})
    return tenant


def tenant_signup(*, name: str, slug: str, owner_email: str, owner_password: str, plan: str = Tenant.Plan.FREE):
    """Create a tenant, its schema (migrated), its domain and its owner.

    Schema creation runs DDL and migrations outside any transaction, so a failure after it
    drops the half-made tenant again rather than leaving an ownerless schema behind.
    """
    from apps.accounts.services import user_create

    tenant_slug_validate(slug)
    with schema_context(get_public_schema_name()):
        tenant = Tenant(schema_name=slug, name=name.strip(), plan=plan)
        tenant.save(verbosity=0)
        try:
            with transaction.atomic():
                Domain.objects.create(domain=f"{slug}.{settings.PORTAL_DOMAIN}", tenant=tenant, is_primary=True)
            with tenant_context(tenant):
                owner = user_create(actor=None, email=owner_email, password=owner_password, role="owner")
        except Exception:
            tenant.delete(force_drop=True)
            raise
    return SignupResult(tenant=tenant, owner=owner, login_url=tenant_url(tenant, "/login/"))


def tenant_set_status(*, actor, tenant: Tenant, status: str) -> Tenant:
    """Suspend or reactivate a tenant; recorded in the public audit log with the platform actor."""
    if status not in Tenant.Status.values:
        raise ValidationError(f"Unknown status {status!r}.")
    with schema_context(get_public_schema_name()), set_actor(actor):
        tenant.status = status
        tenant.save(update_fields=["status"])
    return tenant
