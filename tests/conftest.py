"""The test cast, made once per session: tenants A (`alpha`) and B (`bravo`) with real schemas.

Creating a schema runs every tenant migration, so the two tenants are built once, committed, and
shared; each test still runs in a transaction that is rolled back. In tenant A: alice (owner),
dave (developer), olivia (compliance officer), victor (viewer). In tenant B: charlie, the outsider,
who must never see or touch anything of A.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django_tenants.utils import tenant_context

from tests.helpers import PASSWORD, host_of, start_model_server, start_portal_server


@dataclass
class Cast:
    tenant_a: object
    tenant_b: object
    alice: object
    dave: object
    olivia: object
    victor: object
    charlie: object


def pytest_configure(config: pytest.Config) -> None:
    # Argon2 is deliberately slow; the suite hashes hundreds of passwords.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _make_tenant(slug: str, name: str, members: dict[str, str]):
    from apps.accounts.services import user_create
    from apps.tenants.services import tenant_signup

    owner_name = next(iter(members))
    result = tenant_signup(
        name=name,
        slug=slug,
        owner_email=f"{owner_name}@{slug}.example",
        owner_password=PASSWORD,
        plan="enterprise",
    )
    users = {owner_name: result.owner}
    with tenant_context(result.tenant):
        for name_, role in list(members.items())[1:]:
            users[name_] = user_create(
                actor=result.owner, email=f"{name_}@{slug}.example", password=PASSWORD, role=role
            )
    return result.tenant, users


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment, django_db_blocker, django_db_keepdb, django_db_modify_db_settings):
    """Always build the test database, also for a run whose tests only use committed data
    (pytest-django would otherwise skip it and let them touch the development database)."""
    from django.test.utils import setup_databases, teardown_databases

    from apps.tenants.services import public_tenant_ensure

    with django_db_blocker.unblock():
        db_cfg = setup_databases(verbosity=0, interactive=False, keepdb=django_db_keepdb, aliases={"default"})
        public_tenant_ensure()
        tenant_a, a = _make_tenant(
            "alpha",
            "Alpha Inc",
            {"alice": "owner", "dave": "developer", "olivia": "compliance_officer", "victor": "viewer"},
        )
        tenant_b, b = _make_tenant("bravo", "Bravo Ltd", {"charlie": "owner"})
    _cast.append(Cast(tenant_a=tenant_a, tenant_b=tenant_b, **a, **b))
    yield
    with django_db_blocker.unblock():
        connection.set_schema_to_public()
        teardown_databases(db_cfg, verbosity=0)


_cast: list[Cast] = []


@pytest.fixture
def cast(db) -> Cast:
    return _cast[0]


@pytest.fixture(autouse=True)
def _back_to_public_schema():
    yield
    connection.set_schema_to_public()


@pytest.fixture(autouse=True)
def _forget_redis_state():
    """Redis is not rolled back with the test transaction: drop the caches and counters tests leave."""
    yield
    from config.redis import get_redis

    client = get_redis()
    patterns = (
        "*tenant-host:*", "*apikey:*", "rl:*", "apikey-last-used:*", "access-events*", "route*", "lb:*", "cb:*",
        "budget:*",
    )  # fmt: skip
    for pattern in patterns:
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def in_tenant_a(cast):
    with tenant_context(cast.tenant_a):
        yield cast.tenant_a


@pytest.fixture
def in_tenant_b(cast):
    with tenant_context(cast.tenant_b):
        yield cast.tenant_b


@pytest.fixture
def client_a(cast) -> Client:
    return Client(HTTP_HOST=host_of(cast.tenant_a))


@pytest.fixture
def client_b(cast) -> Client:
    return Client(HTTP_HOST=host_of(cast.tenant_b))


@pytest.fixture
def public_client(db) -> Client:
    return Client(HTTP_HOST=settings.PORTAL_DOMAIN)


@pytest.fixture(scope="session")
def live_portal(django_db_setup):
    """A real gunicorn (4 workers) serving the test database; yields its base URL on `localhost`."""
    with start_portal_server(workers=4) as base:
        yield base


@pytest.fixture(scope="session")
def mlflow_store(django_db_setup, tmp_path_factory):
    """A real MLflow registry for the session: its own fresh database next to the test database."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    from apps.registry.mlflow_store import store_prepare

    parts = urlsplit(settings.MLFLOW_TRACKING_URI)
    uri = urlunsplit(parts._replace(path=f"/{settings.DATABASES['default']['NAME']}_mlflow"))
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    name = uri.rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    store_prepare(uri)
    previous = settings.MLFLOW_TRACKING_URI, settings.MLFLOW_ARTIFACT_ROOT
    settings.MLFLOW_TRACKING_URI = uri
    settings.MLFLOW_ARTIFACT_ROOT = str(tmp_path_factory.mktemp("mlartifacts"))
    yield uri
    settings.MLFLOW_TRACKING_URI, settings.MLFLOW_ARTIFACT_ROOT = previous
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def iris_model_dir(tmp_path_factory):
    """A small scikit-learn model saved as an MLflow model directory, with a signature."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    frame = load_iris(as_frame=True)
    features = frame.data.rename(columns=lambda column: column.replace(" (cm)", "").replace(" ", "_"))
    model = LogisticRegression(max_iter=300).fit(features, frame.target)
    path = tmp_path_factory.mktemp("iris") / "model"
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=infer_signature(features, model.predict(features)),
        pip_requirements=["scikit-learn", "pandas"],
    )
    return path


@pytest.fixture(scope="session")
def served_model(iris_model_dir):
    """A real `mlflow models serve` process on loopback for the session (it takes a few seconds to start)."""
    with start_model_server(iris_model_dir) as (url, _):
        yield url


@pytest.fixture
def make_key(cast):
    """Create a key in tenant A (or `tenant`) and return (key, secret)."""
    from apps.apikeys.services import apikey_create

    def make(owner=None, *, tenant=None, scopes=("inference", "models:read"), **fields):
        tenant = tenant or cast.tenant_a
        owner = owner or (cast.alice if tenant == cast.tenant_a else cast.charlie)
        with tenant_context(tenant):
            return apikey_create(actor=owner, name=fields.pop("name", "test key"), scopes=list(scopes), **fields)

    return make
