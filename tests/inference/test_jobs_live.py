"""Async predict jobs and Idempotency-Key end to end: gunicorn, a real pool worker, real model servers.

The stack (`tests/inference/conftest.py`) lives in a tenant of this module's own; the sweep is called directly
(as the beat task would, every 10 s), against the same PostgreSQL and Redis the live processes use.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from django.db import connection
from django_tenants.utils import tenant_context

from apps.accounts.models import User
from apps.apikeys.models import ApiKey
from apps.apikeys.services import apikey_create
from apps.compliance.models import InferenceRecord
from apps.inference.hashing import sha256_hex
from apps.inference.jobs import jobs_sweep
from apps.tenants.models import Tenant
from config.redis import get_redis
from tests.helpers import free_port

pytestmark = pytest.mark.slow
ORDER = ["queued", "running", "succeeded"]


def _sleepy(delay: float, tag: str = "") -> dict:
    params = {"delay": delay, **({"tag": tag} if tag else {})}
    return {"dataframe_split": {"columns": ["x"], "data": [[1.0]]}, "params": params}


def _poll(stack, job_id: str, until: Callable[[dict], bool], *, seconds: float, secret: str | None = None):
    """Every answer to polling the job (every 50 ms) until `until` holds for one; fails after `seconds`."""
    seen, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = stack.get(f"/api/v1/jobs/{job_id}", secret=secret)
        assert response.status_code == 200, response.text
        seen.append(response.json())
        if until(seen[-1]):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never got there; last seen {seen[-1] if seen else None}")


def _sweep_until_failed(stack, job_id: str, *, seconds: float) -> dict:
    """Run the beat task's sweep for the stack's tenant until the job has failed; returns the job."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with tenant_context(stack.tenant):
            jobs_sweep()
        connection.set_schema_to_public()
        job = stack.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] == "failed":
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} was not failed by the sweep in {seconds} s")


def _records(stack, **filters):
    with tenant_context(stack.tenant):
        return list(InferenceRecord.objects.filter(**filters).order_by("sequence"))


@pytest.fixture
def own_key(stack, as_db):
    """A key of this test's own, so its records can be counted exactly."""
    with tenant_context(stack.tenant):
        key, secret = apikey_create(actor=stack.owner, name=f"k-{uuid.uuid4().hex[:6]}", scopes=["inference"])
    connection.set_schema_to_public()
    return key, secret


# --- async jobs ---------------------------------------------------------------------------------------------


def test_an_async_job_goes_from_queued_to_running_to_succeeded_with_what_sync_would_answer(stack, as_db):
    response = stack.predict("sleepy", body=_sleepy(1.5), headers={"Prefer": "respond-async"})

    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.headers["Location"] == f"/api/v1/jobs/{job_id}"
    seen = _poll(stack, job_id, lambda job: job["status"] in ("succeeded", "failed"), seconds=20)
    statuses = [job["status"] for job in seen]
    assert statuses == sorted(statuses, key=ORDER.index)  # never backwards
    assert "running" in statuses  # at the model for 1.5 s
    job = seen[-1]
    assert job["status"] == "succeeded", job
    assert job["error"] is None
    assert job["finished_at"] > job["created_at"]
    result = job["result"]
    assert result["request_id"] == job["request_id"] == job_id
    assert result["latency_ms"] >= 1500
    sync = stack.predict("sleepy", body=_sleepy(0.0)).json()
    ignored = ("request_id", "latency_ms")
    assert {k: v for k, v in result.items() if k not in ignored} == {
        k: v for k, v in sync.items() if k not in ignored
    }  # fmt: skip
    record = stack.record(job_id)
    assert (record.status, record.server_replica) == ("ok", stack.sleepy_url)
    assert record.output_sha256 == sha256_hex(result["output"])
    assert stack.get(f"/api/v1/jobs/{job_id}").json() == job  # read again, not consumed


def test_a_job_no_worker_takes_stays_queued_and_the_sweep_fails_it_in_bounded_time(stack, as_db):
    pool = f"idle{uuid.uuid4().hex[:8]}"
    model = stack.deploy_iris_copy(replica_urls=[stack.iris_url], gpu_pool=pool, timeout=1)
    try:
        started = time.monotonic()
        response = stack.predict(model, query="?mode=async")
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        for _ in range(3):
            assert stack.get(f"/api/v1/jobs/{job_id}").json()["status"] == "queued"
            time.sleep(0.2)

        job = _sweep_until_failed(stack, job_id, seconds=15)

        assert time.monotonic() - started < 1 + 2 + 3  # timeout + grace + a sweep's slack
        assert job["error"]["code"] == "upstream_timeout"
        record = stack.record(job_id)
        assert (record.status, record.error_code) == ("timeout", "upstream_timeout")
        assert len(_records(stack, request_id=job_id)) == 1
    finally:
        get_redis().delete(f"pool.{pool}")


def test_only_the_key_that_made_a_job_reads_it(stack, as_db, own_key):
    _, other = own_key
    job_id = stack.predict("iris", headers={"Prefer": "respond-async"}).json()["job_id"]
    _poll(stack, job_id, lambda job: job["status"] == "succeeded", seconds=20)

    bravo = Tenant.objects.get(schema_name="bravo")
    with tenant_context(bravo):
        bravo_key, bravo_secret = apikey_create(
            actor=User.objects.get(email="charlie@bravo.example"), name="x", scopes=["inference"]
        )
    connection.set_schema_to_public()
    try:
        sibling = stack.get(f"/api/v1/jobs/{job_id}", secret=other)
        on_bravo = stack.get(f"/api/v1/jobs/{job_id}", secret=bravo_secret, host="bravo.localhost")
        assert sibling.status_code == on_bravo.status_code == 404
        assert sibling.json()["error"]["code"] == on_bravo.json()["error"]["code"] == "job_not_found"
        assert stack.get(f"/api/v1/jobs/{job_id}", secret=bravo_secret).status_code == 401
    finally:
        with tenant_context(bravo):
            ApiKey.objects.filter(pk=bravo_key.pk).delete()
        connection.set_schema_to_public()


# --- Idempotency-Key ----------------------------------------------------------------------------------------


def test_concurrent_duplicates_with_one_idempotency_key_reach_the_model_once(stack, as_db, own_key):
    key, secret = own_key
    tag = uuid.uuid4().hex
    headers = {"Idempotency-Key": f"batch-{tag}"}

    with ThreadPoolExecutor(20) as pool:
        answers = list(
            pool.map(
                lambda _: stack.predict("sleepy", body=_sleepy(1.0, tag), headers=headers, secret=secret), range(20)
            )
        )

    assert [answer.status_code for answer in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
    assert all(answer.json() == answers[0].json() for answer in answers)
    assert sorted(answer.headers.get("Idempotent-Replayed", "") for answer in answers) == [""] + ["true"] * 19
    assert stack.calls_tagged(tag) == 1
    records = _records(stack, key_id=key.pk)
    assert len(records) == 20  # every request is recorded, each under its own request id
    called = [record for record in records if record.status == "ok" and record.server_replica]
    assert [record.request_id for record in called] == [answers[0].json()["request_id"]]
    assert sum(record.error_code == "idempotent_replay" for record in records) == 19

    later = stack.predict("sleepy", body=_sleepy(1.0, tag), headers=headers, secret=secret)
    assert later.headers["Idempotent-Replayed"] == "true"
    assert later.json() == answers[0].json()
    assert stack.calls_tagged(tag) == 1


def test_the_same_key_with_another_body_is_a_422(stack, as_db, own_key):
    _, secret = own_key
    tag = uuid.uuid4().hex
    headers = {"Idempotency-Key": tag}
    assert stack.predict("sleepy", body=_sleepy(0.0, tag), headers=headers, secret=secret).status_code == 200

    reused = stack.predict("sleepy", body=_sleepy(0.1, tag), headers=headers, secret=secret)

    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert stack.calls_tagged(tag) == 1


def test_a_503_from_the_worker_is_not_kept_and_a_retry_runs_again(stack, as_db, own_key):
    key, secret = own_key
    model = stack.deploy_iris_copy(replica_urls=[f"http://127.0.0.1:{free_port()}"])
    headers = {"Idempotency-Key": uuid.uuid4().hex}

    first = stack.predict(model, headers=headers, secret=secret)
    retry = stack.predict(model, headers=headers, secret=secret)

    assert first.status_code == retry.status_code == 503, (first.text, retry.text)
    assert "Idempotent-Replayed" not in retry.headers
    assert first.json()["error"]["request_id"] != retry.json()["error"]["request_id"]
    records = _records(stack, key_id=key.pk)
    assert [record.status for record in records] == ["unavailable", "unavailable"]
    assert records[0].dispatched_at is not None  # the worker found no replica, not the web


def test_an_async_request_with_an_idempotency_key_is_one_job(stack, as_db, own_key):
    _, secret = own_key
    tag = uuid.uuid4().hex
    headers = {"Idempotency-Key": tag, "Prefer": "respond-async"}

    first = stack.predict("sleepy", body=_sleepy(0.5, tag), headers=headers, secret=secret)
    again = stack.predict("sleepy", body=_sleepy(0.5, tag), headers=headers, secret=secret)

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    job_id = first.json()["job_id"]
    _poll(stack, job_id, lambda job: job["status"] == "succeeded", seconds=20, secret=secret)
    assert stack.calls_tagged(tag) == 1


# --- last: it kills the worker's processes ------------------------------------------------------------------


def test_a_job_whose_worker_dies_is_failed_as_worker_lost_by_the_sweep(stack, as_db):
    response = stack.predict("sleepy", body=_sleepy(2.5), headers={"Prefer": "respond-async"})
    job_id = response.json()["job_id"]
    _poll(stack, job_id, lambda job: job["status"] == "running", seconds=10)

    started = time.monotonic()
    for child in psutil.Process(stack.worker.pid).children(recursive=True):
        child.kill()
    job = _sweep_until_failed(stack, job_id, seconds=15)

    assert time.monotonic() - started < 3 + 2 + 3  # timeout + grace + slack
    assert job["error"]["code"] == "worker_lost"
    assert job["result"] is None
    record = stack.record(job_id)
    assert (record.status, record.error_code) == ("worker_lost", "worker_lost")
    stack.wait_for_worker()  # Celery replaced the killed pool processes
