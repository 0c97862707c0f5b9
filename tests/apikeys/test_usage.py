"""Last-used times travel through Redis and reach the database by a periodic task, not per request."""

from apps.apikeys import usage
from apps.apikeys.models import ApiKey
from apps.apikeys.services import apikey_touch_many
from tests.helpers import bearer


def test_last_used_is_collected_then_written_in_bulk(client_a, make_key, in_tenant_a, monkeypatch):
    monkeypatch.setattr(usage, "_last_recorded", {})
    key, secret = make_key()
    assert client_a.get("/api/v1/me", **bearer(secret)).status_code == 200
    assert ApiKey.objects.get(pk=key.pk).last_used_at is None  # nothing written on the hot path
    collected = usage.keys_last_used_drain(schema="alpha")
    assert list(collected) == [key.prefix]
    assert apikey_touch_many(last_used=collected) == 1
    assert ApiKey.objects.get(pk=key.pk).last_used_at == collected[key.prefix]
    assert usage.keys_last_used_drain(schema="alpha") == {}


def test_a_busy_key_is_recorded_once_per_interval_per_process(make_key, in_tenant_a, monkeypatch):
    monkeypatch.setattr(usage, "_last_recorded", {})
    writes = []
    monkeypatch.setattr(usage, "get_redis", lambda: type("R", (), {"hset": lambda *a: writes.append(a)})())
    for _ in range(100):
        usage.key_used(prefix="aip_000000000000")
    assert len(writes) == 1
