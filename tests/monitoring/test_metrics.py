"""`/metrics` on the public host: who may scrape it, and what it says (inference samples, queues, circuits)."""

import time
import uuid

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from apps.monitoring.metrics import LATENCY_BUCKETS, prediction_observe
from config.redis import get_redis
from tests.helpers import free_port

TOKEN = "scrape-token-0123456789abcdef"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, keyed by name and labels (the parser rejects malformed text)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client, **headers) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/plain; version=")
    return samples(response.content.decode())


@pytest.fixture
def redis_keys():
    """Keys a test writes into the shared Redis, deleted afterwards whatever happens."""
    written: list[str | bytes] = []
    yield written
    if written:
        get_redis().delete(*written)


@pytest.fixture
def outside_network(settings):
    """The test client's 127.0.0.1 is no longer an allowed scraper address."""
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]


# --- who may scrape -----------------------------------------------------------------------------------


def test_loopback_may_scrape_by_default(public_client):
    assert public_client.get("/metrics").status_code == 200


def test_a_client_outside_the_allowed_networks_is_refused(public_client, outside_network):
    response = public_client.get("/metrics")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "forbidden"
    assert error["request_id"] == response["X-Request-ID"]
    assert b"portal_" not in response.content


def test_the_scrape_token_opens_metrics_from_anywhere(public_client, outside_network, settings):
    settings.METRICS_TOKEN = TOKEN
    response = public_client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert b"portal_metrics_redis_up" in response.content


@pytest.mark.parametrize(
    "authorization", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN, "Bearer ", ""]
)
def test_a_wrong_token_is_refused(public_client, outside_network, settings, authorization):
    settings.METRICS_TOKEN = TOKEN
    response = public_client.get("/metrics", HTTP_AUTHORIZATION=authorization)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_no_token_is_accepted_while_none_is_configured(public_client, outside_network, settings):
    settings.METRICS_TOKEN = ""
    assert public_client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_a_request_through_an_unannounced_proxy_is_not_trusted_by_address(public_client):
    """TRUSTED_PROXY_COUNT=0 but X-Forwarded-For present: REMOTE_ADDR is the proxy's, not the caller's."""
    assert public_client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 403


def test_a_trusted_proxy_passes_on_the_callers_address(public_client, settings):
    settings.AXES_IPWARE_PROXY_COUNT = 1
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    assert public_client.get("/metrics", HTTP_X_FORWARDED_FOR="10.1.2.3").status_code == 200
    assert public_client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 403


def test_ipv4_clients_of_a_dual_stack_listener_match_ipv4_networks(public_client):
    assert public_client.get("/metrics", REMOTE_ADDR="::ffff:127.0.0.1").status_code == 200
    assert public_client.get("/metrics", REMOTE_ADDR="::ffff:203.0.113.7").status_code == 403


def test_only_get_is_served(public_client):
    assert public_client.post("/metrics").status_code == 405


def test_a_tenant_host_does_not_serve_metrics(client_a):
    """The metrics name every tenant; a tenant's host must not hand them out, whoever asks."""
    prediction_observe(
        tenant="bravo", model="secret-model", version="1", status="ok", total_seconds=0.1, upstream_seconds=0.05
    )
    response = client_a.get("/metrics")
    assert response.status_code == 404
    assert b"portal_inference" not in response.content
    assert b"secret-model" not in response.content


def test_a_scrape_reads_no_database(public_client, django_assert_num_queries):
    public_client.get("/metrics")  # the public host's lookup is cached after this
    with django_assert_num_queries(0):
        assert public_client.get("/metrics").status_code == 200


# --- what it says -------------------------------------------------------------------------------------


def test_a_prediction_is_counted_with_both_latencies(public_client):
    model = f"m-{uuid.uuid4().hex[:8]}"
    prediction_observe(tenant="alpha", model=model, version="3", status="ok", total_seconds=0.2, upstream_seconds=0.15)
    prediction_observe(
        tenant="alpha", model=model, version="3", status="timeout", total_seconds=30.5, upstream_seconds=None
    )
    found = scrape(public_client)

    def counted(status):
        labels = {"tenant": "alpha", "model": model, "version": "3", "status": status}
        return found[("portal_inference_requests_total", frozenset(labels.items()))]

    assert counted("ok") == 1
    assert counted("timeout") == 1
    tenant_model = {"tenant": "alpha", "model": model}
    assert found[("portal_inference_latency_seconds_count", frozenset(tenant_model.items()))] == 2
    assert found[("portal_inference_latency_seconds_sum", frozenset(tenant_model.items()))] == pytest.approx(30.7)
    assert found[("portal_inference_upstream_latency_seconds_count", frozenset(tenant_model.items()))] == 1
    bucket = frozenset({**tenant_model, "le": "0.25"}.items())
    assert found[("portal_inference_latency_seconds_bucket", bucket)] == 1
    assert found[("portal_inference_upstream_latency_seconds_bucket", bucket)] == 1


def test_latency_buckets_span_a_millisecond_to_a_minute():
    assert LATENCY_BUCKETS[0] == 0.001
    assert LATENCY_BUCKETS[-1] == 60.0
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)


def test_a_negative_duration_counts_as_zero(public_client):
    model = f"m-{uuid.uuid4().hex[:8]}"
    prediction_observe(tenant="alpha", model=model, version="1", status="ok", total_seconds=-0.5, upstream_seconds=-1)
    found = scrape(public_client)
    labels = frozenset({"tenant": "alpha", "model": model}.items())
    assert found[("portal_inference_latency_seconds_sum", labels)] == 0
    assert found[("portal_inference_upstream_latency_seconds_sum", labels)] == 0


def test_queue_depth_sums_every_priority_of_a_pool_queue(public_client, redis_keys):
    pool = f"pool.test-{uuid.uuid4().hex[:8]}"
    client = get_redis()
    redis_keys += [pool, f"{pool}\x06\x163"]
    client.rpush(pool, "a", "b", "c")
    client.rpush(f"{pool}\x06\x163", "d")
    found = scrape(public_client)
    assert found[("portal_queue_depth", frozenset({"queue": pool}.items()))] == 4


def test_an_empty_queue_known_to_the_broker_reports_zero(public_client, redis_keys):
    """Redis drops empty lists; kombu's binding still names the queue, so autoscaling sees 0, not nothing."""
    pool = f"pool.idle-{uuid.uuid4().hex[:8]}"
    binding = f"_kombu.binding.{pool}"
    redis_keys.append(binding)
    get_redis().sadd(binding, f"{pool}\x06\x16\x06\x16{pool}")
    found = scrape(public_client)
    assert found[("portal_queue_depth", frozenset({"queue": pool}.items()))] == 0


def test_only_pool_queues_are_reported_and_odd_keys_are_skipped(public_client, redis_keys):
    other, odd = f"default-{uuid.uuid4().hex[:8]}", f"pool.odd-{uuid.uuid4().hex[:8]}"
    redis_keys += [other, odd]
    get_redis().rpush(other, "x")
    get_redis().set(odd, "not a list")
    queues = {dict(labels).get("queue") for name, labels in scrape(public_client) if name == "portal_queue_depth"}
    assert other not in queues
    assert odd not in queues


def test_no_queue_depth_for_a_broker_that_is_not_redis(public_client, settings, redis_keys):
    pool = f"pool.test-{uuid.uuid4().hex[:8]}"
    redis_keys.append(pool)
    get_redis().rpush(pool, "a")
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
    assert not [name for name, _ in scrape(public_client) if name == "portal_queue_depth"]


def test_circuit_state_per_replica(public_client, redis_keys):
    server = str(900000 + int(uuid.uuid4().int % 1000))
    now = time.time()
    replicas = {
        "http://x:8080": ({"state": "open", "failures": 3, "opened_until": now + 60}, 1.0),
        "http://y:8080": ({"state": "open", "failures": 3, "opened_until": now - 1}, 0.5),
        "http://z:8080": ({"state": "closed", "failures": 0, "opened_until": 0}, 0.0),
    }
    client = get_redis()
    for url, (fields, _) in replicas.items():
        key = f"cb:alpha:{server}:{url}"
        redis_keys.append(key)
        client.hset(key, mapping=fields)
    found = scrape(public_client)
    for url, (_, expected) in replicas.items():
        labels = frozenset({"tenant": "alpha", "server": server, "replica": url}.items())
        assert found[("portal_circuit_open", labels)] == expected


def test_circuit_gauge_matches_what_the_balancer_reports(public_client, redis_keys):
    from apps.inference.balancer import HALF_OPEN, OPEN, circuit_states

    server, urls = 900999, ["http://a:1", "http://b:1"]
    client = get_redis()
    client.hset(f"cb:bravo:{server}:{urls[0]}", mapping={"state": "open", "opened_until": time.time() + 60})
    client.hset(f"cb:bravo:{server}:{urls[1]}", mapping={"state": "open", "opened_until": time.time() - 60})
    redis_keys += [f"cb:bravo:{server}:{url}" for url in urls]
    states = circuit_states(schema="bravo", server_id=server, urls=urls)
    found = scrape(public_client)
    gauge = {OPEN: 1.0, HALF_OPEN: 0.5}
    for url in urls:
        labels = frozenset({"tenant": "bravo", "server": str(server), "replica": url}.items())
        assert found[("portal_circuit_open", labels)] == gauge[states[url].state]


def test_an_unreachable_redis_still_answers_with_redis_up_zero(public_client, monkeypatch):
    """A scrape during a Redis outage still exports the inference samples and says Redis is down."""
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    monkeypatch.setattr("apps.monitoring.selectors.get_redis", lambda: dead)
    prediction_observe(tenant="alpha", model="m", version="1", status="ok", total_seconds=0.1, upstream_seconds=None)
    found = scrape(public_client)
    assert found[("portal_metrics_redis_up", frozenset())] == 0
    assert any(name == "portal_inference_requests_total" for name, _ in found)


def test_a_malformed_allowed_network_stops_start_up():
    """Refused when settings load, not discovered as an error at the first scrape."""
    from tests.test_settings import run_django

    result = run_django("pass", METRICS_ALLOWED_NETWORKS="10.0.0.0/8,10.0.0/33")
    assert result.returncode != 0
    assert "METRICS_ALLOWED_NETWORKS" in result.stderr
