"""Idempotent demo data for `make run`: the public site, tenant `demo`, its users, and var/demo.env."""

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand
from django_tenants.utils import get_public_schema_name, schema_context, tenant_context

from apps.accounts.models import User
from apps.accounts.roles import Role
from apps.accounts.services import user_create
from apps.apikeys.models import ApiKey, Scope
from apps.apikeys.secrets import key_matches, key_parse
from apps.apikeys.services import apikey_create
from apps.registry.demo import (
    DEMO_CHAT_MODEL,
    DEMO_EMBED_MODEL,
    DEMO_MODEL,
    demo_deployment_ensure,
    demo_model_ensure,
    demo_openai_models_ensure,
    local_model_path,
)
from apps.tenants.models import Tenant
from apps.tenants.services import public_tenant_ensure, tenant_signup, tenant_url

DEMO_SLUG = "demo"
OWNER_EMAIL = "owner@demo.example"
OFFICER_EMAIL = "officer@demo.example"
PLATFORM_EMAIL = "platform@localhost.example"


class Command(BaseCommand):
    help = "Create (or reuse) the demo tenant and users, and write var/demo.env."

    def handle(self, *args, **options) -> None:
        env_path = Path(os.environ.get("VAR_DIR", settings.BASE_DIR / "var")) / "demo.env"
        values = _read_env(env_path)
        passwords = {
            key: values.get(key) or secrets.token_urlsafe(12)
            for key in ("DEMO_PASSWORD", "OFFICER_PASSWORD", "PLATFORM_PASSWORD")
        }
        public_tenant_ensure()
        with schema_context(get_public_schema_name()):
            _user_ensure(PLATFORM_EMAIL, passwords["PLATFORM_PASSWORD"], superuser=True)
        tenant = Tenant.objects.filter(schema_name=DEMO_SLUG).first()
        if tenant is None:
            tenant = tenant_signup(
                name="Demo Corp",
                slug=DEMO_SLUG,
                owner_email=OWNER_EMAIL,
                owner_password=passwords["DEMO_PASSWORD"],
                plan=Tenant.Plan.TEAM,
            ).tenant
        with tenant_context(tenant):
            owner = _user_ensure(OWNER_EMAIL, passwords["DEMO_PASSWORD"], role=Role.OWNER)
            _user_ensure(OFFICER_EMAIL, passwords["OFFICER_PASSWORD"], role=Role.COMPLIANCE_OFFICER)
            values["DEMO_API_KEY"] = _demo_key_ensure(owner, values.get("DEMO_API_KEY", ""))
            champion = demo_model_ensure(owner=owner)
            model_url = f"http://127.0.0.1:{os.environ.get('DEMO_MODEL_PORT', '5001')}"
            demo_deployment_ensure(owner=owner, version=champion, url=model_url)
            openai_url = f"http://127.0.0.1:{os.environ.get('DEMO_OPENAI_PORT', '5002')}"
            demo_openai_models_ensure(owner=owner, url=openai_url)
            values.update(
                DEMO_CHAT_MODEL=DEMO_CHAT_MODEL,
                DEMO_EMBED_MODEL=DEMO_EMBED_MODEL,
                DEMO_OPENAI_URL=openai_url,
                DEMO_MODEL=DEMO_MODEL,
                DEMO_MODEL_VERSION=str(champion.version),
                DEMO_MODEL_PATH=str(local_model_path(champion)),
                DEMO_MODEL_URL=model_url,
            )
        values.update(
            PORTAL_URL=tenant_url(tenant).rstrip("/"),
            DEMO_USER=OWNER_EMAIL,
            OFFICER_USER=OFFICER_EMAIL,
            PLATFORM_URL=settings.PORTAL_BASE_URL,
            PLATFORM_USER=PLATFORM_EMAIL,
            **passwords,
        )
        env_path.parent.mkdir(parents=True, exist_ok=True)
        env_path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
        self.stdout.write(f"demo tenant ready at {values['PORTAL_URL']}/ ; values in {env_path}")


def _read_env(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _demo_key_ensure(owner: User, known: str) -> str:
    """Reuse the key from demo.env while it still works; a secret cannot be read back, so else make one."""
    parts = key_parse(known)
    if parts is not None:
        key = ApiKey.objects.filter(prefix=parts.prefix, revoked_at__isnull=True).first()
        if key is not None and key_matches(parts.full, key.secret_hash):
            return known
    _, secret = apikey_create(actor=owner, name="demo key", scopes=[Scope.INFERENCE, Scope.MODELS_READ])
    return secret


def _user_ensure(email: str, password: str, *, role: Role | None = None, superuser: bool = False) -> User:
    """Keep the printed password true even if someone changed it in the demo."""
    user = User.objects.filter(email=email).first()
    if user is None:
        if superuser:
            user = User.objects.create_superuser(email=email, password=password)
        else:
            user = user_create(actor=None, email=email, password=password, role=role)
    if not user.check_password(password):
        user.set_password(password)
        user.save(update_fields=["password"])
    return user
