"""The access audit: refused requests are buffered in Redis and flushed into their tenant's own schema."""

import logging
import threading

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test import RequestFactory
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, tenant_context
from redis import Redis
from redis.connection import AbstractConnection

from apps.accounts.models import User
from apps.accounts.roles import Role
from apps.compliance import services
from apps.compliance.models import AccessEvent
from apps.compliance.services import access_event_record, access_events_flush, buffer_key, dropped_key
from apps.compliance.tasks import flush_access_events, flush_access_events_everywhere
from config.celery import TenantContextMissing
from config.redis import get_redis
from tests.helpers import free_port, login, otp_login

Reason = AccessEvent.Reason


@pytest.fixture(autouse=True)
def _clean_buffers(cast):
    schemas = [cast.tenant_a.schema_name, cast.tenant_b.schema_name, get_public_schema_name()]
    keys = [key for schema in schemas for key in (buffer_key(schema), dropped_key(schema))]
    get_redis().delete(*keys)
    yield
    get_redis().delete(*keys)


def _record(**overrides) -> None:
    fields = {
        "reason": Reason.UNKNOWN_KEY,
        "method": "POST",
        "path": "/api/v1/infer",
        "client_ip": "203.0.113.7",
        "key_prefix": "pk_test_1234",
        "request_id": "req-1",
    }
    access_event_record(**{**fields, **overrides})


@pytest.fixture
def round_trips(monkeypatch) -> list[bytes]:
    """Every command or pipeline written to any Redis connection: one entry per round trip."""
    sent: list[bytes] = []
    original = AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        sent.append(command)
        return original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return sent


def test_recording_costs_one_redis_round_trip_and_no_query(in_tenant_a, django_assert_num_queries, request):
    _record(request_id="warm-up")  # opens the pooled connection and loads the script on the server
    round_trips = request.getfixturevalue("round_trips")

    with django_assert_num_queries(0):
        _record(request_id="counted")

    assert len(round_trips) == 1
    assert get_redis().llen(buffer_key(in_tenant_a.schema_name)) == 2


def test_flush_writes_every_field_and_empties_the_buffer(cast, in_tenant_a):
    before = timezone.now()
    _record(
        reason=Reason.REVOKED_KEY,
        method="DELETE",
        path="/api/v1/models/7",
        client_ip="2001:db8::1",
        key_prefix="pk_live_ab12",
        request_id="req-42",
        user_id=cast.dave.pk,
        detail="revoked by alice",
    )

    assert access_events_flush() == 1

    event = AccessEvent.objects.get()
    assert before <= event.occurred_at <= timezone.now()
    assert (event.reason, event.method, event.path) == (Reason.REVOKED_KEY, "DELETE", "/api/v1/models/7")
    assert (event.client_ip, event.key_prefix, event.request_id) == ("2001:db8::1", "pk_live_ab12", "req-42")
    assert (event.user_id, event.detail) == (cast.dave.pk, "revoked by alice")
    assert get_redis().exists(buffer_key(in_tenant_a.schema_name)) == 0
    assert access_events_flush() == 0
    assert AccessEvent.objects.count() == 1


def test_oversized_or_forged_values_are_clipped_so_the_batch_still_inserts(in_tenant_a):
    _record(path="/x" * 400 + "\x00", detail="d" * 500, client_ip="1.2.3.4, 5.6.7.8", method="PROPFINDXYZ")
    _record(request_id="valid-neighbour")

    assert access_events_flush() == 2

    clipped = AccessEvent.objects.get(request_id="req-1")
    assert (len(clipped.path), len(clipped.detail), clipped.client_ip) == (300, 200, None)
    assert "\x00" not in clipped.path
    assert clipped.method == "PROPFINDXY"


def test_events_recorded_for_a_never_appear_in_b(cast):
    with tenant_context(cast.tenant_a):
        _record(path="/api/v1/alpha-only")
    with tenant_context(cast.tenant_b):
        _record(path="/api/v1/bravo-only")
        assert access_events_flush() == 1
    with tenant_context(cast.tenant_a):
        assert access_events_flush() == 1
        assert list(AccessEvent.objects.values_list("path", flat=True)) == ["/api/v1/alpha-only"]
    with tenant_context(cast.tenant_b):
        assert list(AccessEvent.objects.values_list("path", flat=True)) == ["/api/v1/bravo-only"]


def test_flush_for_a_named_schema_writes_into_that_schema(cast):
    access_event_record(
        reason=Reason.EXPIRED_KEY, method="GET", path="/api/v1/models", client_ip=None, schema_name="alpha"
    )

    assert access_events_flush(schema_name="alpha") == 1

    assert connection.schema_name == get_public_schema_name()
    with tenant_context(cast.tenant_a):
        assert AccessEvent.objects.filter(reason=Reason.EXPIRED_KEY).count() == 1
    with tenant_context(cast.tenant_b):
        assert not AccessEvent.objects.exists()


def test_nothing_is_recorded_in_the_public_schema(cast):
    public = get_public_schema_name()
    connection.set_schema_to_public()

    _record()
    _record(schema_name=public)

    assert get_redis().exists(buffer_key(public), dropped_key(public)) == 0
    assert get_redis().exists(buffer_key("alpha"), buffer_key("bravo")) == 0
    with pytest.raises(ValueError, match="public"):
        access_events_flush()


def test_a_full_buffer_keeps_the_newest_events_and_counts_the_dropped(in_tenant_a, monkeypatch):
    monkeypatch.setattr(services, "MAX_BUFFERED_EVENTS", 5)
    for n in range(8):
        _record(request_id=f"req-{n}")

    assert get_redis().llen(buffer_key("alpha")) == 5
    assert access_events_flush() == 6

    kept = AccessEvent.objects.exclude(reason=Reason.BUFFER_OVERFLOW)
    assert sorted(kept.values_list("request_id", flat=True)) == [f"req-{n}" for n in range(3, 8)]
    overflow = AccessEvent.objects.get(reason=Reason.BUFFER_OVERFLOW)
    assert overflow.detail == "3 events dropped"
    assert get_redis().exists(dropped_key("alpha")) == 0
    assert access_events_flush() == 0


def test_a_redis_outage_never_reaches_the_request(in_tenant_a, monkeypatch, caplog):
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    monkeypatch.setattr(services, "get_redis", lambda: unreachable)

    with caplog.at_level(logging.WARNING, logger="apps.compliance.services"):
        result = _record(path="/api/v1/secret-path", key_prefix="pk_do_not_log")

    assert result is None
    assert "not buffered" in caplog.text
    assert "secret-path" not in caplog.text
    assert "pk_do_not_log" not in caplog.text


def test_records_from_many_threads_are_flushed_exactly_once(in_tenant_a):
    schema = in_tenant_a.schema_name

    def produce(thread: int) -> None:
        for n in range(125):
            access_event_record(
                reason=Reason.RATE_LIMITED,
                method="POST",
                path="/api/v1/infer",
                client_ip="198.51.100.9",
                request_id=f"t{thread}-{n}",
                schema_name=schema,
            )

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    written = 0
    while any(thread.is_alive() for thread in threads):
        written += access_events_flush(batch_size=50)  # drains while the producers still push
    for thread in threads:
        thread.join()
    written += access_events_flush(batch_size=50)

    assert written == 1000
    assert AccessEvent.objects.count() == 1000
    assert AccessEvent.objects.values("request_id").distinct().count() == 1000


def test_the_flush_task_writes_into_the_senders_schema(in_tenant_a):
    _record()

    assert flush_access_events() == 1
    assert AccessEvent.objects.count() == 1


def test_the_flush_task_refuses_to_run_in_public(cast):
    connection.set_schema_to_public()

    with pytest.raises(TenantContextMissing):
        flush_access_events()


def test_the_fan_out_sends_one_flush_per_tenant_with_buffered_events(cast, monkeypatch):
    sent_from: list[str] = []
    monkeypatch.setattr(flush_access_events, "delay", lambda: sent_from.append(connection.schema_name))
    _record(schema_name="alpha")

    assert flush_access_events_everywhere() == 1

    assert sent_from == ["alpha"]


@pytest.mark.parametrize(("member", "status"), [("olivia", 200), ("alice", 200)])
def test_officers_and_owners_read_the_access_audit_in_the_admin(cast, client_a, member, status):
    with tenant_context(cast.tenant_a):
        _record(key_prefix="pk_seen_in_admin")
        access_events_flush()
    otp_login(client_a, getattr(cast, member))

    response = client_a.get("/admin/compliance/accessevent/")

    assert response.status_code == status
    assert b"pk_seen_in_admin" in response.content
    assert client_a.get("/admin/compliance/accessevent/add/").status_code == 403


def test_staff_without_the_role_permission_cannot_open_the_access_audit(cast, client_a):
    with tenant_context(cast.tenant_a):
        officers = Group.objects.get(name=Role.COMPLIANCE_OFFICER.value)
        officers.permissions.remove(
            Permission.objects.get(content_type__app_label="compliance", codename="view_accessevent")
        )
    otp_login(client_a, cast.olivia)

    assert client_a.get("/admin/compliance/accessevent/").status_code == 403


@pytest.mark.parametrize("member", ["dave", "victor"])
def test_developers_and_viewers_cannot_open_the_access_audit(cast, client_a, member):
    login(client_a, getattr(cast, member))

    response = client_a.get("/admin/compliance/accessevent/")

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_the_access_audit_is_not_offered_on_the_public_host(cast):
    connection.set_schema_to_public()
    request = RequestFactory().get("/admin/")
    request.user = User(email="platform@localhost.example", is_staff=True, is_superuser=True)
    model_admin = admin.site._registry[AccessEvent]

    assert not model_admin.has_module_permission(request)
    assert not model_admin.has_view_permission(request)
