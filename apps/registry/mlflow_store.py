"""The portal's one way to MLflow: its store URI, its start-up migration, a client, each tenant's experiment.

MLflow has no tenancy. Every registered model of a tenant is named `<schema>__<name>` in MLflow, every run
lives in the tenant's own experiment (artifacts under `<artifact root>/<schema>`), and no request path
takes an MLflow name from a client: names are looked up in the tenant's own tables first.
"""

import subprocess
import sys
from functools import cache
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection


def mlflow_name(model_name: str, schema: str | None = None) -> str:
    return f"{schema or connection.schema_name}__{model_name}"


def _psycopg_url(tracking_uri: str) -> str:
    parts = urlsplit(tracking_uri)
    return urlunsplit(parts._replace(scheme="postgresql"))


def store_prepare(tracking_uri: str | None = None) -> None:
    """Create MLflow's database if missing, check it answers, and migrate its schema, once, before any
    process uses it: MLflow retries a missing database for ~100 s, and concurrent first use of an empty
    store fails on duplicate keys."""
    import psycopg
    from psycopg import sql

    tracking_uri = tracking_uri or settings.MLFLOW_TRACKING_URI
    url = _psycopg_url(tracking_uri)
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            if _schema_revision(conn) == _mlflow_head_revision():
                return  # already migrated: skip the ~9 s of `mlflow db upgrade`
    except psycopg.OperationalError as error:
        if "does not exist" not in str(error):
            raise ImproperlyConfigured(f"MLflow's database is unreachable: {error}") from None
        parts = urlsplit(url)
        with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(parts.path.lstrip("/"))))
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", tracking_uri], capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise ImproperlyConfigured(f"mlflow db upgrade failed:\n{result.stderr[-2000:]}")


def _schema_revision(conn) -> str | None:
    import psycopg

    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return row[0] if row else None


def _mlflow_head_revision() -> str:
    """The newest migration this MLflow ships, read from its migration scripts (without importing mlflow)."""
    import importlib.util
    from pathlib import Path

    from alembic.script import ScriptDirectory

    package = Path(next(iter(importlib.util.find_spec("mlflow").submodule_search_locations)))
    return ScriptDirectory(str(package / "store" / "db_migrations")).get_current_head()


@cache
def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def registry_client():
    """MlflowClient on the portal's store (one per process and store)."""
    return _client(settings.MLFLOW_TRACKING_URI)


def tenant_experiment_id(schema: str | None = None) -> str:
    """The tenant's experiment, created on first use with an explicit artifact location."""
    schema = schema or connection.schema_name
    client = registry_client()
    experiment = client.get_experiment_by_name(f"tenant-{schema}")
    if experiment is not None:
        return experiment.experiment_id
    from mlflow.exceptions import MlflowException

    location = f"{settings.MLFLOW_ARTIFACT_ROOT.rstrip('/')}/{schema}"
    try:
        return client.create_experiment(f"tenant-{schema}", artifact_location=location, tags={"portal.tenant": schema})
    except MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(f"tenant-{schema}").experiment_id
