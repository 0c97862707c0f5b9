"""The web half of predict through Django's test client: refusals, async jobs and Idempotency-Key, no worker."""

from __future__ import annotations

import base64
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from unittest.mock import ANY

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import tenant_context

from apps.api.errors import ApiError
from apps.compliance.models import InferenceRecord
from apps.compliance.records import record_append
from apps.inference import idempotency, tasks
from apps.inference.api import preference_names
from apps.inference.balancer import started_key
from apps.inference.jobs import due_key, jobs_due_schemas, jobs_sweep
from apps.inference.services import reply_key
from apps.inference.tasks import sweep_jobs, sweep_jobs_everywhere
from apps.serving.models import ServerReplica
from apps.serving.services import deployment_create, server_create
from config.redis import get_redis
from tests.helpers import PASSWORD, bearer, host_of, login, record_fields
from tests.serving.conftest import make_model

TABLE = {"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}


@pytest.fixture
def deployed(cast, in_tenant_a):
    """Model `scorer` (v1..v3, champion on 3) on a server whose only replica is known to be down."""
    model = make_model("scorer", aliases={"champion": 3})
    server = server_create(
        actor=cast.alice, name="gpu-a", protocol="mlflow", gpu_pool="a", replica_urls=["http://10.9.9.9:1"]
    )
    deployment_create(actor=cast.alice, model=model, server=server, alias="champion")
    ServerReplica.objects.filter(server=server).update(is_up=False)
    connection.set_schema_to_public()
    return model


def _predict(client, secret, body=None, *, query="", **extra):
    return client.post(
        f"/api/v1/models/scorer/predict{query}", body if body is not None else TABLE,
        content_type="application/json", **bearer(secret), **extra,
    )  # fmt: skip


def _record(cast, request_id: str) -> InferenceRecord:
    with tenant_context(cast.tenant_a):
        return InferenceRecord.objects.get(request_id=request_id)


def test_no_live_replica_is_a_503_with_retry_after_recorded_without_dispatch(deployed, client_a, make_key, cast):
    _, secret = make_key()

    response = _predict(client_a, secret)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_unavailable"
    assert int(response["Retry-After"]) >= 1
    record = _record(cast, response.json()["error"]["request_id"])
    assert (record.status, record.model_version, record.alias) == ("unavailable", 3, "champion")
    assert record.dispatched_at is None


def test_the_signature_is_that_of_the_version_the_pin_selects(deployed, client_a, make_key, cast):
    with tenant_context(cast.tenant_a):
        deployed.versions.filter(version=1).update(signature={"inputs": [{"name": "legacy", "type": "double"}]})
    _, pinned = make_key(model_pins={"scorer": "1"})
    _, unpinned = make_key()

    refused = _predict(client_a, pinned)  # column x fits champion (v3), not v1
    assert _predict(client_a, unpinned).status_code == 503  # passed validation, found no replica

    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "signature_mismatch"
    assert "'x'" in error["message"]
    record = _record(cast, error["request_id"])
    assert (record.model_version, record.alias, record.status) == (1, "", "refused")


def test_a_refusal_costs_the_record_and_nothing_else(deployed, client_a, make_key):
    _, secret = make_key()
    _predict(client_a, secret, {"nope": 1})  # warms the key and route caches

    with CaptureQueriesContext(connection) as queries:
        response = _predict(client_a, secret, {"nope": 1})

    assert response.status_code == 422
    statements = [query["sql"].split()[0] for query in queries.captured_queries]
    # The chain append: lock the head, insert the record, move the head (plus its savepoint and search_path).
    assert [s for s in statements if s not in ("SAVEPOINT", "RELEASE", "SET")] == ["SELECT", "INSERT", "UPDATE"]


def test_the_client_request_id_is_not_reused_for_the_record(deployed, client_a, make_key, cast):
    _, secret = make_key()
    first = _predict(client_a, secret, {"nope": 1}, HTTP_X_REQUEST_ID="client-chosen-id-1")
    second = _predict(client_a, secret, {"nope": 1}, HTTP_X_REQUEST_ID="client-chosen-id-1")

    ids = {first.json()["error"]["request_id"], second.json()["error"]["request_id"]}
    assert len(ids) == 2
    assert ids == {first["X-Request-ID"], second["X-Request-ID"]}
    for request_id in ids:
        assert _record(cast, request_id).status == "refused"


def test_portal_members_who_may_hold_keys_may_predict_and_others_may_not(deployed, client_a, cast):
    login(client_a, cast.dave)
    assert client_a.post("/api/v1/models/scorer/predict", TABLE, content_type="application/json").status_code == 503

    client_a.logout()
    login(client_a, cast.victor)
    refused = client_a.post("/api/v1/models/scorer/predict", TABLE, content_type="application/json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"


def test_a_session_predict_needs_the_csrf_token(deployed, cast):
    browser = Client(HTTP_HOST=host_of(cast.tenant_a), enforce_csrf_checks=True)
    login_page = browser.get("/login/")
    token = login_page.cookies["csrftoken"].value
    assert browser.post(
        "/login/", {"username": cast.dave.email, "password": PASSWORD, "csrfmiddlewaretoken": token}
    ).status_code == 302  # fmt: skip
    token = browser.cookies["csrftoken"].value

    forged = browser.post("/api/v1/models/scorer/predict", TABLE, content_type="application/json")
    sent = browser.post("/api/v1/models/scorer/predict", TABLE, content_type="application/json", HTTP_X_CSRFTOKEN=token)

    assert forged.status_code == 403
    assert "CSRF" in forged.json()["error"]["message"]
    assert sent.status_code == 503  # through every check, to the replica that is down


def test_another_tenant_cannot_reach_or_detect_the_model(deployed, client_b, make_key, cast):
    _, secret = make_key(tenant=cast.tenant_b)

    response = _predict(client_b, secret)
    unknown = client_b.post(
        "/api/v1/models/never-was/predict", TABLE, content_type="application/json", **bearer(secret)
    )

    assert response.status_code == unknown.status_code == 404
    assert response.json()["error"]["code"] == unknown.json()["error"]["code"] == "model_not_found"


# --- async jobs ---------------------------------------------------------------------------------------------

ASYNC = {"HTTP_PREFER": 'handling=lenient, respond-async; note="a, b", wait=10'}


@pytest.fixture
def reachable(cast, in_tenant_a):
    """Model `scorer` (champion on 3) whose server's replica counts as up, on a GPU pool no worker listens on.

    Requests are really dispatched (onto `pool.<gpu pool>` in Redis), and nothing ever answers them.
    """
    pool = f"nobody{uuid.uuid4().hex[:8]}"
    model = make_model("scorer", aliases={"champion": 3})
    server = server_create(
        actor=cast.alice, name="gpu-b", protocol="mlflow", gpu_pool=pool, replica_urls=["http://10.9.9.9:1"],
        request_timeout_seconds=5,
    )  # fmt: skip
    deployment_create(actor=cast.alice, model=model, server=server, alias="champion")
    connection.set_schema_to_public()
    yield SimpleNamespace(model=model, queue=f"pool.{pool}", timeout=5)
    get_redis().delete(f"pool.{pool}")


@pytest.fixture(autouse=True)
def _forget_jobs_and_idempotency_keys():
    yield
    client = get_redis()
    for pattern in ("inference-job*", "inference-reply:*", "inference-started:*", "idempotency*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


def _queued_envelopes(queue: str) -> list[dict]:
    """The predict tasks waiting on a Celery queue in Redis, as the worker would receive them."""
    messages = [json.loads(raw) for raw in get_redis().lrange(queue, 0, -1)]
    return [json.loads(base64.b64decode(message["body"]))[0][0] for message in messages]


def _job(client, secret, job_id: str):
    return client.get(f"/api/v1/jobs/{job_id}", **bearer(secret))


def test_respond_async_answers_202_with_the_job_to_poll_and_dispatches_for_the_retention(
    reachable, client_a, make_key, cast
):
    _, secret = make_key()

    started = time.monotonic()
    response = _predict(client_a, secret, **ASYNC)

    assert response.status_code == 202, response.content
    assert time.monotonic() - started < reachable.timeout  # nobody waited for the (absent) worker
    body = response.json()
    job_id = body["job_id"]
    assert body == {
        "job_id": job_id,
        "status": "queued",
        "request_id": job_id,
        "model": "scorer",
        "model_version": "3",
        "alias": "champion",
        "url": f"/api/v1/jobs/{job_id}",
    }
    assert response["Location"] == f"/api/v1/jobs/{job_id}"
    assert response["Preference-Applied"] == "respond-async"
    assert response["X-Request-ID"] == job_id
    [envelope] = _queued_envelopes(reachable.queue)
    assert envelope["request_id"] == job_id
    assert envelope["reply_seconds"] == settings.INFERENCE_JOB_RESULT_SECONDS

    poll = _job(client_a, secret, job_id)
    assert poll.status_code == 200
    assert poll.json()["status"] == "queued"
    assert poll.json()["result"] is poll.json()["error"] is poll.json()["finished_at"] is None
    with tenant_context(cast.tenant_a):
        assert not InferenceRecord.objects.filter(request_id=job_id).exists()  # the worker will write it


def test_mode_async_in_the_query_does_the_same_and_an_unknown_mode_is_a_400(reachable, client_a, make_key):
    _, secret = make_key()

    assert _predict(client_a, secret, query="?mode=async").status_code == 202
    refused = _predict(client_a, secret, query="?mode=later")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_mode"
    assert len(_queued_envelopes(reachable.queue)) == 1


@pytest.mark.parametrize(
    ("prefer", "query"),
    [
        ("respond-sync", ""),
        ("respond-asyncx", ""),
        ('x="respond-async"', ""),
        ("", ""),
        ("respond-async", "?mode=sync"),
    ],
)
def test_other_preferences_and_mode_sync_are_not_async(deployed, client_a, make_key, prefer, query):
    _, secret = make_key()

    response = _predict(client_a, secret, query=query, HTTP_PREFER=prefer)

    assert response.status_code == 503  # the sync path, to the replica that is down
    assert "Preference-Applied" not in response


def test_async_refusals_are_answered_at_once_and_recorded_like_sync_ones(deployed, client_a, make_key, cast):
    _, secret = make_key()

    down = _predict(client_a, secret, **ASYNC)
    malformed = _predict(client_a, secret, {"nope": 1}, **ASYNC)

    assert (down.status_code, malformed.status_code) == (503, 422)
    assert _record(cast, down.json()["error"]["request_id"]).status == "unavailable"
    assert _record(cast, malformed.json()["error"]["request_id"]).status == "refused"
    assert _job(client_a, secret, down.json()["error"]["request_id"]).status_code == 404  # no job was made


def test_a_job_is_read_by_its_own_key_only(reachable, client_a, client_b, make_key, cast):
    _, secret = make_key()
    _, sibling = make_key(name="same tenant, other key")
    _, outsider = make_key(tenant=cast.tenant_b)
    _, reader = make_key(name="no inference scope", scopes=("models:read",))
    job_id = _predict(client_a, secret, **ASYNC).json()["job_id"]

    assert _job(client_a, secret, job_id).status_code == 200
    mine_elsewhere = _job(client_a, sibling, job_id)
    unknown = _job(client_a, secret, uuid.uuid4().hex)
    assert mine_elsewhere.status_code == unknown.status_code == 404
    assert mine_elsewhere.json()["error"] == {**unknown.json()["error"], "request_id": ANY}
    assert mine_elsewhere.json()["error"]["code"] == "job_not_found"
    assert _job(client_b, outsider, job_id).status_code == 404
    assert _job(client_a, secret, "../../etc").status_code == 404
    assert _job(client_a, reader, job_id).status_code == 403
    login(client_a, cast.alice)
    assert client_a.get(f"/api/v1/jobs/{job_id}").status_code == 404  # the key's owner is not the key


def test_a_portal_members_job_is_theirs_alone(reachable, client_a, cast):
    login(client_a, cast.dave)
    job_id = client_a.post(
        "/api/v1/models/scorer/predict?mode=async", TABLE, content_type="application/json"
    ).json()["job_id"]  # fmt: skip

    assert client_a.get(f"/api/v1/jobs/{job_id}").json()["status"] == "queued"
    client_a.logout()
    login(client_a, cast.alice)
    assert client_a.get(f"/api/v1/jobs/{job_id}").status_code == 404


def test_the_sweep_fails_a_job_nobody_answered_once_its_deadline_and_grace_have_passed(
    reachable, client_a, make_key, cast
):
    key, secret = make_key()
    job_id = _predict(client_a, secret, **ASYNC).json()["job_id"]
    due = time.time() + reachable.timeout + settings.INFERENCE_WORKER_GRACE_SECONDS + 1

    with tenant_context(cast.tenant_a):
        assert jobs_sweep() == 0  # not due yet
        assert jobs_due_schemas(schema_names=["alpha", "bravo"]) == []
        assert jobs_due_schemas(schema_names=["alpha", "bravo"], now=due) == ["alpha"]
        assert jobs_sweep(now=due) == 1
        assert jobs_sweep(now=due) == 0  # settled once

    job = _job(client_a, secret, job_id).json()
    assert job["status"] == "failed"
    assert job["error"] == {"code": "upstream_timeout", "message": "No worker took the request up before its deadline."}
    assert job["result"] is None
    assert job["finished_at"] >= job["created_at"]
    record = _record(cast, job_id)
    assert (record.status, record.error_code, record.key_id) == ("timeout", "upstream_timeout", key.pk)
    assert record.dispatched_at is not None
    assert record.model_version == 3


def test_a_started_job_that_never_answered_is_worker_lost(reachable, client_a, make_key, cast):
    _, secret = make_key()
    job_id = _predict(client_a, secret, **ASYNC).json()["job_id"]
    get_redis().set(started_key("alpha", job_id), "1", ex=60)  # what a worker's replica pick leaves

    assert _job(client_a, secret, job_id).json()["status"] == "running"
    with tenant_context(cast.tenant_a):
        assert jobs_sweep(now=time.time() + 60) == 1

    assert _job(client_a, secret, job_id).json()["error"]["code"] == "worker_lost"
    assert _record(cast, job_id).status == "worker_lost"


def test_a_workers_reply_is_the_jobs_result_and_the_sweep_leaves_it_alone(reachable, client_a, make_key, cast):
    key, secret = make_key()
    job_id = _predict(client_a, secret, **ASYNC).json()["job_id"]
    with tenant_context(cast.tenant_a):  # what the worker does: record, then reply
        record_append(**record_fields(request_id=job_id, key_id=key.pk, model_name="scorer", model_version=3,
                                      status="ok", latency_ms=1234))  # fmt: skip
    get_redis().rpush(reply_key("alpha", job_id), json.dumps({"status": "ok", "output": [7], "upstream_ms": 2.5}))

    with tenant_context(cast.tenant_a):
        assert jobs_sweep(now=time.time() + 3600) == 0
    first, again = _job(client_a, secret, job_id).json(), _job(client_a, secret, job_id).json()

    assert first == again  # the reply is read, never taken
    assert first["status"] == "succeeded"
    assert first["result"] == {
        "output": [7], "model": "scorer", "model_version": "3", "alias": "champion", "pinned": False,
        "canary": False, "request_id": job_id, "latency_ms": 1234.0,
    }  # fmt: skip
    assert first["error"] is None
    assert first["finished_at"] == _record(cast, job_id).answered_at.isoformat().replace("+00:00", "Z")


def test_the_beat_fan_out_sends_one_sweep_per_tenant_with_due_jobs(reachable, client_a, make_key, cast, monkeypatch):
    _, secret = make_key()
    job_id = _predict(client_a, secret, **ASYNC).json()["job_id"]
    sent_from: list[str] = []
    monkeypatch.setattr(sweep_jobs, "delay", lambda: sent_from.append(connection.schema_name))
    monkeypatch.setattr(tasks, "tenant_schema_names", lambda: ["alpha", "bravo"])  # not the live tests' tenants
    assert sweep_jobs_everywhere() == 0  # nothing due yet
    get_redis().zadd(due_key("alpha"), {job_id: 0})  # its deadline long past

    assert sweep_jobs_everywhere() == 1
    assert sent_from == ["alpha"]
    assert settings.CELERY_BEAT_SCHEDULE["sweep-inference-jobs"]["task"] == sweep_jobs_everywhere.name


# --- Idempotency-Key ----------------------------------------------------------------------------------------


def _key() -> dict:
    return {"HTTP_IDEMPOTENCY_KEY": f"order-{uuid.uuid4()}"}


def _records_by(cast, key_id: int) -> list[InferenceRecord]:
    with tenant_context(cast.tenant_a):
        return list(InferenceRecord.objects.filter(key_id=key_id).order_by("sequence"))


def test_a_kept_refusal_is_replayed_with_the_first_answer_and_recorded_as_a_replay(deployed, client_a, make_key, cast):
    key, secret = make_key()
    idempotency_key = _key()

    first = _predict(client_a, secret, {"nope": 1}, **idempotency_key)
    again = _predict(client_a, secret, {"nope": 1}, **idempotency_key)

    assert first.status_code == again.status_code == 422
    assert again.json() == first.json()  # the first answer, its request id included
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert again["X-Request-ID"] != first["X-Request-ID"]  # the replay is a request of its own
    original, replay = _records_by(cast, key.pk)
    assert (original.request_id, original.status, original.error_code) == (
        first.json()["error"]["request_id"], "refused", "invalid_payload"
    )  # fmt: skip
    assert (replay.request_id, replay.status, replay.error_code) == (again["X-Request-ID"], "refused",
                                                                     "idempotent_replay")  # fmt: skip
    assert replay.input_sha256 == original.input_sha256
    assert replay.server_replica == ""
    assert replay.dispatched_at is None


def test_a_503_is_not_kept_so_a_retry_with_the_same_key_runs_again(deployed, client_a, make_key, cast):
    key, secret = make_key()
    idempotency_key = _key()

    first = _predict(client_a, secret, **idempotency_key)
    retry = _predict(client_a, secret, **idempotency_key)

    assert first.status_code == retry.status_code == 503
    assert "Idempotent-Replayed" not in retry
    assert int(retry["Retry-After"]) >= 1
    assert first.json()["error"]["request_id"] != retry.json()["error"]["request_id"]
    assert [(record.status, record.error_code) for record in _records_by(cast, key.pk)] == [
        ("unavailable", "model_unavailable"),
        ("unavailable", "model_unavailable"),
    ]


def test_the_same_key_with_another_request_is_a_422_and_recorded(deployed, client_a, make_key, cast):
    key, secret = make_key()
    idempotency_key = _key()
    _predict(client_a, secret, {"nope": 1}, **idempotency_key)

    other_body = _predict(client_a, secret, {"nope": 2}, **idempotency_key)
    other_version = _predict(client_a, secret, {"nope": 1}, query="?version=2", **idempotency_key)
    other_mode = _predict(client_a, secret, {"nope": 1}, **idempotency_key, **ASYNC)

    for response in (other_body, other_version, other_mode):
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert [record.error_code for record in _records_by(cast, key.pk)] == ["invalid_payload"] + [
        "idempotency_key_reused"
    ] * 3


@pytest.mark.parametrize("value", ["", "x" * 256, "tab\there", "caf\u00e9"])
def test_a_malformed_idempotency_key_is_a_400(deployed, client_a, make_key, cast, value):
    key, secret = make_key()

    response = _predict(client_a, secret, HTTP_IDEMPOTENCY_KEY=value)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"
    assert [record.error_code for record in _records_by(cast, key.pk)] == ["invalid_idempotency_key"]


def test_keys_are_scoped_to_the_api_key_and_the_tenant(deployed, client_a, client_b, make_key, cast):
    _, secret = make_key()
    _, sibling = make_key(name="sibling")
    _, outsider = make_key(tenant=cast.tenant_b)
    idempotency_key = _key()
    first = _predict(client_a, secret, {"nope": 1}, **idempotency_key)

    sibling_answer = _predict(client_a, sibling, {"nope": 2}, **idempotency_key)
    outsider_answer = _predict(client_b, outsider, {"nope": 1}, **idempotency_key)

    assert sibling_answer.status_code == 422
    assert sibling_answer.json()["error"]["code"] == "invalid_payload"  # not idempotency_key_reused: not its key
    assert "Idempotent-Replayed" not in sibling_answer
    assert sibling_answer.json()["error"]["request_id"] != first.json()["error"]["request_id"]
    assert outsider_answer.status_code == 404  # bravo has no `scorer`; alpha's kept answer is not bravo's
    assert "Idempotent-Replayed" not in outsider_answer


def test_an_async_replay_returns_the_same_job_and_dispatches_nothing_more(reachable, client_a, make_key):
    _, secret = make_key()
    idempotency_key = _key()

    first = _predict(client_a, secret, **idempotency_key, **ASYNC)
    again = _predict(client_a, secret, **idempotency_key, **ASYNC)

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again["Location"] == first["Location"]
    assert again["Preference-Applied"] == "respond-async"
    assert again["Idempotent-Replayed"] == "true"
    assert len(_queued_envelopes(reachable.queue)) == 1
    assert _job(client_a, secret, first.json()["job_id"]).json()["status"] == "queued"


def test_a_replay_costs_its_record_and_nothing_else(deployed, client_a, make_key):
    _, secret = make_key()
    idempotency_key = _key()
    _predict(client_a, secret, {"nope": 1}, **idempotency_key)

    with CaptureQueriesContext(connection) as queries:
        response = _predict(client_a, secret, {"nope": 1}, **idempotency_key)

    assert response["Idempotent-Replayed"] == "true"
    statements = [query["sql"].split()[0] for query in queries.captured_queries]
    assert [s for s in statements if s not in ("SAVEPOINT", "RELEASE", "SET")] == ["SELECT", "INSERT", "UPDATE"]


# --- the idempotency store on its own (real Redis, no HTTP) --------------------------------------------------

SCOPE = idempotency.Scope(schema="alpha", principal="key:1", endpoint="/test")


def _call_once(key: str, answer: idempotency.Answer, *, seconds: float = 0.0, calls: list | None = None):
    def call() -> idempotency.Answer:
        if calls is not None:
            calls.append(1)
        time.sleep(seconds)
        return answer

    return idempotency.idempotent_call(scope=SCOPE, key=key, fingerprint="f", hold_seconds=10, call=call)


def test_concurrent_duplicates_wait_for_the_first_and_share_its_answer():
    key, calls = f"k-{uuid.uuid4()}", []
    answer = idempotency.Answer(200, {"output": [1]}, {"X-Model-Version": "3"})

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(lambda _: _call_once(key, answer, seconds=0.5, calls=calls), range(20)))

    assert len(calls) == 1
    assert all(outcome.answer == answer for outcome in outcomes)
    assert sorted(outcome.replayed for outcome in outcomes) == [False] + [True] * 19


def test_a_5xx_releases_the_key_and_a_waiting_duplicate_runs_in_its_place():
    key, calls = f"k-{uuid.uuid4()}", []
    failed, served = idempotency.Answer(503, {"error": {}}), idempotency.Answer(200, {"output": [1]})

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_call_once, key, failed, seconds=0.5, calls=calls)
        time.sleep(0.1)
        second = pool.submit(_call_once, key, served, calls=calls)
        assert first.result().answer == failed
        assert second.result() == idempotency.Outcome(served, replayed=False)
    assert len(calls) == 2
    assert _call_once(key, failed).answer == served  # kept now


def test_an_exception_releases_the_key():
    key = f"k-{uuid.uuid4()}"

    def broken() -> idempotency.Answer:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        idempotency.idempotent_call(scope=SCOPE, key=key, fingerprint="f", hold_seconds=10, call=broken)
    assert _call_once(key, idempotency.Answer(201, {})).replayed is False


def test_a_duplicate_that_outwaits_its_bound_is_a_409():
    key = f"k-{uuid.uuid4()}"
    with ThreadPoolExecutor(1) as pool:
        pool.submit(_call_once, key, idempotency.Answer(200, {}), seconds=1.5)
        time.sleep(0.1)
        with pytest.raises(ApiError) as refused:
            idempotency.idempotent_call(
                scope=SCOPE, key=key, fingerprint="f", hold_seconds=0.5, call=lambda: idempotency.Answer(200, {})
            )
    assert (refused.value.status_code, refused.value.error_code) == (409, "idempotency_key_in_use")


def test_a_marker_that_is_no_longer_ours_is_left_alone():
    """A first request that outlived its hold must not overwrite the request that claimed the key after it."""
    key = f"k-{uuid.uuid4()}"

    def slow() -> idempotency.Answer:
        get_redis().delete(idempotency.entry_key(SCOPE, key))  # as if the marker had expired
        assert _call_once(key, idempotency.Answer(200, {"by": "second"})).replayed is False
        return idempotency.Answer(200, {"by": "first"})

    idempotency.idempotent_call(scope=SCOPE, key=key, fingerprint="f", hold_seconds=10, call=slow)
    assert _call_once(key, idempotency.Answer(200, {})).answer.body == {"by": "second"}


@pytest.mark.parametrize(
    ("header", "names"),
    [
        ("respond-async", {"respond-async"}),
        ("Respond-Async ; foo=bar, wait=5", {"respond-async", "wait"}),
        ('return=minimal, x="a,respond-async", handling=strict', {"return", "x", "handling"}),
        ('x="a\\",respond-async"', {"x"}),
        (" , ,", set()),
    ],
)
def test_prefer_header_parsing(header, names):
    assert preference_names(header) == names
