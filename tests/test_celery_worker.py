"""A real Celery worker process: tasks run in the sender's tenant schema, never in public by accident."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from auditlog.models import LogEntry
from celery.exceptions import TimeoutError as CeleryTimeout
from django.contrib.sessions.models import Session
from django.db import connection
from django.utils import timezone
from django_tenants.utils import schema_context, tenant_context

from apps.accounts import services
from apps.accounts.models import User
from apps.accounts.tasks import clear_expired_sessions
from apps.tenants.tasks import clear_expired_sessions_everywhere
from config.celery import TenantContextMissing
from config.celery import app as celery_app
from tests.helpers import database_url_for_tests

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def worker(django_db_setup, tmp_path_factory):
    """One worker process for the session, on a queue of its own, against the test database."""
    queue = f"test-{uuid.uuid4().hex[:8]}"
    mail_dir = tmp_path_factory.mktemp("mail")
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_tests(),
        "EMAIL_URL": f"filemail:///{mail_dir}",  # an absolute path keeps its slash: filemail:////tmp/...
        "CELERY_DEFAULT_QUEUE": queue,  # what the worker's own tasks send (the beat fan-out) stays here too
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            queue,
            "--concurrency",
            "1",
            "--pool",
            "prefork",
            "-l",
            "WARNING",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=ROOT,
        env=env,
    )
    previous_queue = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = queue
    try:
        yield mail_dir
    finally:
        celery_app.conf.task_default_queue = previous_queue
        process.terminate()
        process.wait(30)


@pytest.fixture
def committed(django_db_blocker):
    """Autocommit access to the test database, so the worker process sees what the test writes."""
    with django_db_blocker.unblock():
        yield
    connection.set_schema_to_public()


def _wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_task_from_a_tenant_writes_its_audit_entry_in_that_tenant(worker, committed):
    from tests.conftest import _cast

    cast = _cast[0]
    email = f"invitee-{uuid.uuid4().hex[:6]}@alpha.example"
    with tenant_context(cast.tenant_a):
        member = services.member_invite(actor=cast.alice, email=email, role="viewer")
        try:
            sent_at = _wait_for(lambda: User.objects.get(pk=member.pk).invitation_sent_at, timeout=60)
            entry = LogEntry.objects.get_for_object(member).get(
                action=LogEntry.Action.UPDATE, changes__has_key="invitation_sent_at"
            )
            assert entry.actor_id == cast.alice.pk
            assert sent_at <= timezone.now()
        finally:
            LogEntry.objects.get_for_object(member).delete()
            member.delete()
    for schema in ("public", cast.tenant_b.schema_name):
        with schema_context(schema):
            assert not LogEntry.objects.filter(object_repr=email).exists()
    mails = "".join(path.read_text() for path in worker.iterdir())
    assert email in mails
    assert "http://alpha.localhost:8000/invitation/" in mails


def test_sending_a_tenant_task_from_public_is_refused(committed):
    with pytest.raises(TenantContextMissing):
        clear_expired_sessions.delay()


def test_worker_refuses_a_tenant_task_that_arrives_without_a_tenant(worker, committed):
    result = celery_app.send_task("apps.accounts.tasks.clear_expired_sessions", headers={"_schema_name": "public"})
    with pytest.raises(TenantContextMissing):
        result.get(timeout=60)


def test_beat_fan_out_clears_expired_sessions_in_every_tenant(worker, committed):
    from tests.conftest import _cast

    cast = _cast[0]
    keys = {}
    for tenant in (cast.tenant_a, cast.tenant_b):
        with tenant_context(tenant):
            keys[tenant.schema_name] = Session.objects.create(
                session_key=uuid.uuid4().hex,
                session_data="",
                expire_date=timezone.now() - timezone.timedelta(days=1),
            ).session_key
    try:
        assert clear_expired_sessions_everywhere.delay().get(timeout=60) >= 2
    except CeleryTimeout:
        pytest.fail("the worker did not answer")
    for schema, key in keys.items():
        with schema_context(schema):
            _wait_for(lambda key=key: not Session.objects.filter(session_key=key).exists())


def test_worker_keeps_its_database_connection_from_task_to_task(worker, committed):
    """Celery alone would close it after every task: a new PostgreSQL session (a forked backend) each time."""
    from tests.conftest import _cast

    def worker_sessions() -> set:
        # The worker's connection is the one whose last statement was the task's delete of expired sessions.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND query ILIKE %s",
                ["%django_session%expire_date%"],
            )
            return set(cursor.fetchall())

    with tenant_context(_cast[0].tenant_a):
        clear_expired_sessions.delay().get(timeout=60)
        after_first = _wait_for(worker_sessions, timeout=10)
        for _ in range(2):
            clear_expired_sessions.delay().get(timeout=60)
        assert after_first & worker_sessions()
