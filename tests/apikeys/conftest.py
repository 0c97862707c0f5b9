import pytest
from django_tenants.utils import tenant_context

from apps.apikeys.services import apikey_create


@pytest.fixture
def make_key(cast):
    """Create a key in tenant A (or `tenant`) and return (key, secret)."""

    def make(owner=None, *, tenant=None, scopes=("inference", "models:read"), **fields):
        tenant = tenant or cast.tenant_a
        owner = owner or (cast.alice if tenant == cast.tenant_a else cast.charlie)
        with tenant_context(tenant):
            return apikey_create(actor=owner, name=fields.pop("name", "test key"), scopes=list(scopes), **fields)

    return make


def bearer(secret: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
