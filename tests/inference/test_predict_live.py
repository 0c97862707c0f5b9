"""The predict path end to end: gunicorn, a real Celery worker process, real `mlflow models serve` processes.

Everything here is committed (the web and worker processes cannot see a test's transaction), in a tenant
of this module's own, so the records it leaves behind (append-only, by design) disturb no other test.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django_tenants.utils import tenant_context

from apps.accounts.models import User
from apps.apikeys.models import ApiKey
from apps.apikeys.services import apikey_create
from apps.compliance.models import InferenceRecord
from apps.compliance.records import chain_verify
from apps.inference.hashing import sha256_hex
from apps.registry import services as registry
from apps.serving import services as serving
from apps.tenants.models import Tenant
from tests.helpers import db_tamper, free_port, start_model_server
from tests.registry.test_registry_api import zipped

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = json.loads((ROOT / "example.json").read_text())
pytestmark = pytest.mark.slow

# --- the happy path and its record --------------------------------------------------------------------------


def test_predict_answers_with_output_version_and_request_id(stack, as_db):
    response = stack.predict("iris")

    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["output"]) == 2
    assert body["model"] == "iris"
    assert body["model_version"] == "2"
    assert body["alias"] == "champion"
    assert body["pinned"] is False
    assert body["latency_ms"] > 0
    assert response.headers["X-Model-Version"] == "2"
    assert response.headers["X-Request-ID"] == body["request_id"]


def test_each_request_leaves_one_record_with_the_hashes_of_what_went_in_and_out(stack, as_db):
    records_form = {"dataframe_records": [dict(zip(EXAMPLE["dataframe_split"]["columns"], row, strict=True))
                                          for row in EXAMPLE["dataframe_split"]["data"]]}  # fmt: skip
    answers = [stack.predict("iris"), stack.predict("iris", body=records_form)]

    for answer in answers:
        assert answer.status_code == 200
        record = stack.record(answer.json()["request_id"])
        assert record.status == "ok"
        # Both forms are forwarded (and hashed) as the same dataframe_split.
        assert record.input_sha256 == sha256_hex(EXAMPLE)
        assert record.output_sha256 == sha256_hex(answer.json()["output"])
        assert record.model_version == 2
        assert record.alias == "champion"
        assert record.server_replica == stack.iris_url
        assert record.key_prefix
        assert record.received_at <= record.dispatched_at <= record.answered_at
        assert record.latency_ms >= record.upstream_ms >= 0
    with tenant_context(stack.tenant):
        ids = [answer.json()["request_id"] for answer in answers]
        assert InferenceRecord.objects.filter(request_id__in=ids).count() == 2
        assert chain_verify().ok


# --- which version answers ----------------------------------------------------------------------------------


def test_a_keys_pin_beats_alias_and_version(stack, as_db):
    with tenant_context(stack.tenant):
        _, pinned = apikey_create(actor=stack.owner, name="legal", scopes=["inference"], model_pins={"iris": "1"})

    for query in ("", "?alias=champion", "?version=2"):
        response = stack.predict("iris", query=query, secret=pinned)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "1"
        assert response.json()["pinned"] is True
        assert response.headers["X-Model-Version"] == "1"
    assert stack.predict("iris", query="?version=1").json()["pinned"] is False


def test_rollback_changes_the_answering_version_on_the_next_request(stack, as_db):
    assert stack.predict("iris").json()["model_version"] == "2"

    rollback = stack.post("/api/v1/models/iris/rollback", secret=stack.secret, body={"reason": "v2 misbehaves"})
    assert rollback.status_code == 200, rollback.text
    try:
        assert stack.predict("iris").json()["model_version"] == "1"
    finally:
        promote = stack.post("/api/v1/models/iris/promote", secret=stack.secret, body={"version": 2})
        assert promote.status_code == 200, promote.text
    assert stack.predict("iris").json()["model_version"] == "2"


def test_a_canary_takes_its_share_and_the_response_names_the_version_that_answered(stack, as_db):
    def canary(percent: int) -> None:
        with tenant_context(stack.tenant):
            serving.deployment_update(
                actor=stack.owner,
                deployment=stack.iris_deployment,
                canary_version=stack.iris_versions[0] if percent else None,
                canary_percent=percent,
            )
        connection.set_schema_to_public()

    canary(99)
    try:
        answers = [stack.predict("iris").json() for _ in range(10)]
        assert all(answer["canary"] == (answer["model_version"] == "1") for answer in answers)
        assert sum(answer["canary"] for answer in answers) >= 8
        canaried = next(answer for answer in answers if answer["canary"])
        assert stack.record(canaried["request_id"]).model_version == 1
        canary(50)
        seen = {stack.predict("iris").json()["model_version"] for _ in range(40)}
        assert seen == {"1", "2"}  # a miss on either side has odds of 2 in 2**40
        # A request by version is not part of the alias's canary.
        assert {stack.predict("iris", query="?version=2").json()["model_version"] for _ in range(10)} == {"2"}
    finally:
        canary(0)
    answer = stack.predict("iris")
    assert (answer.json()["model_version"], answer.json()["canary"]) == ("2", False)


def test_metrics_count_predictions_by_tenant_model_version_and_status(stack, as_db):
    from prometheus_client.parser import text_string_to_metric_families

    assert stack.predict("iris").status_code == 200
    assert stack.predict("iris", raw=b"{", headers={"Content-Type": "application/json"}).status_code == 400
    port = stack.base.rsplit(":", 1)[1]
    scraped = requests.get(f"http://127.0.0.1:{port}/metrics", headers={"Host": f"localhost:{port}"}, timeout=30)

    assert scraped.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
    }
    tenant = stack.tenant.schema_name
    ok = (
        "portal_inference_requests_total",
        (("model", "iris"), ("status", "ok"), ("tenant", tenant), ("version", "2")),
    )
    refused = ("portal_inference_requests_total", (("model", "iris"), ("status", "refused"), ("tenant", tenant),
                                                   ("version", "2")))  # fmt: skip
    assert samples[ok] >= 1
    assert samples[refused] >= 1
    assert any(name == "portal_inference_upstream_latency_seconds_count" for name, _ in samples)
    assert any(
        name == "portal_queue_depth" and dict(labels)["queue"] == f"pool.{stack.pool}" for name, labels in samples
    )


# --- refusals: recorded, never dispatched ---------------------------------------------------------------------


def test_a_signature_mismatch_is_a_422_naming_the_field_and_the_model_is_not_called(stack, as_db):
    body = {"dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
                                "data": [[5.1, "wide", 1.4, 0.2]]}}  # fmt: skip

    response = stack.predict("iris", body=body)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "signature_mismatch"
    assert "sepal_width" in error["message"]
    record = stack.record(error["request_id"])
    assert (record.status, record.error_code) == ("refused", "signature_mismatch")
    assert record.dispatched_at is None
    assert record.server_replica == ""
    assert record.input_sha256 == sha256_hex(body)


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "code"),
    [
        (b'{"dataframe_split": ', "application/json", 400, "malformed_json"),
        (b"sepal_length=5.1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b'{"rows": []}', "application/json", 422, "invalid_payload"),
        (b"[1, 2]", "application/json", 422, "invalid_payload"),
    ],
)
def test_bad_bodies_get_clear_errors_and_records(stack, as_db, raw, content_type, status, code):
    response = stack.predict("iris", raw=raw, headers={"Content-Type": content_type})

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert stack.record(error["request_id"]).status == "refused"


def test_an_oversized_body_is_a_413(stack, as_db):
    response = stack.predict("iris", raw=b"{" + b" " * (2 * 1024 * 1024) + b"}")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_unknown_models_versions_and_aliases_are_404_and_recorded(stack, as_db):
    for model, query in (("nope", ""), ("iris", "?version=99"), ("iris", "?alias=nobody")):
        response = stack.predict(model, query=query)
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "model_not_found"
        assert stack.record(error["request_id"]).status == "refused"
    assert stack.predict("iris", query="?version=two").status_code == 400


def test_without_the_inference_scope_or_a_key_nothing_runs(stack, as_db):
    with tenant_context(stack.tenant):
        _, reader = apikey_create(actor=stack.owner, name="reader", scopes=["models:read"])

    assert stack.predict("iris", secret=reader).status_code == 403
    assert stack.predict("iris", secret="").status_code == 401
    assert stack.predict("iris", secret="pk_live_bogus.bogus").status_code == 401


def test_another_tenants_key_and_model_names_are_unknown_here(stack, as_db):
    bravo = Tenant.objects.get(schema_name="bravo")
    with tenant_context(bravo):
        key, bravo_secret = apikey_create(actor=User.objects.get(email="charlie@bravo.example"), name="x",
                                          scopes=["inference"])  # fmt: skip
    connection.set_schema_to_public()
    try:
        refused = stack.predict("iris", secret=bravo_secret)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"

        port = stack.base.rsplit(":", 1)[1]
        headers = {"Host": f"bravo.localhost:{port}", "Authorization": f"Bearer {bravo_secret}"}
        url = f"http://127.0.0.1:{port}/api/v1/models/{{}}/predict"
        on_bravo = requests.post(url.format("iris"), json=EXAMPLE, headers=headers, timeout=30)
        missing = requests.post(url.format("never-existed"), json=EXAMPLE, headers=headers, timeout=30)
        assert on_bravo.status_code == missing.status_code == 404
        assert on_bravo.json()["error"]["message"].replace("iris", "X") == missing.json()["error"]["message"].replace(
            "never-existed", "X"
        )
    finally:
        with tenant_context(bravo):
            ApiKey.objects.filter(pk=key.pk).delete()
        connection.set_schema_to_public()


# --- upstream trouble ----------------------------------------------------------------------------------------


def test_a_model_slower_than_its_timeout_is_a_504_recorded_as_timeout(stack, as_db):
    started = time.monotonic()
    response = stack.predict("sleepy", body={"dataframe_split": {"columns": ["x"], "data": [[1.0]]},
                                             "params": {"delay": 8.0}})  # fmt: skip

    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 7
    record = stack.record(response.json()["error"]["request_id"])
    assert (record.status, record.error_code) == ("timeout", "upstream_timeout")


def test_no_replica_answering_is_a_503_with_retry_after(stack, as_db):
    with tenant_context(stack.tenant):
        dead = serving.server_create(
            actor=stack.owner,
            name=f"dead-{uuid.uuid4().hex[:6]}",
            protocol="mlflow",
            gpu_pool=stack.pool,
            replica_urls=[f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"],
        )
        model = registry.model_create(actor=stack.owner, name=f"down-{uuid.uuid4().hex[:6]}")
        archive = Path(stack.iris_model_dir).parent / f"{model.name}.zip"
        archive.write_bytes(zipped(stack.iris_model_dir).getvalue())
        version = registry.version_register_from_upload(actor=stack.owner, model=model, archive=archive)
        registry.model_promote(actor=stack.owner, model=model, version=version)
        serving.deployment_create(actor=stack.owner, model=model, server=dead, alias="champion")
    connection.set_schema_to_public()

    response = stack.predict(model.name)

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "model_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    record = stack.record(response.json()["error"]["request_id"])
    assert record.status == "unavailable"


def test_a_replica_going_down_mid_load_fails_no_request(stack, as_db):
    with start_model_server(stack.iris_model_dir) as (second_url, second):
        with tenant_context(stack.tenant):
            serving.server_update(actor=stack.owner, server=stack.cpu, replica_urls=[stack.iris_url, second_url])
        connection.set_schema_to_public()
        try:
            stop = threading.Event()

            def load() -> list[int]:
                statuses = []
                while not stop.is_set():
                    answer = stack.predict("iris")
                    statuses.append(answer.status_code)
                    if answer.status_code == 200:
                        answered.append(answer.json()["request_id"])
                return statuses

            answered: list[str] = []
            with ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(load) for _ in range(4)]
                time.sleep(3)
                os.killpg(second.pid, signal.SIGTERM)  # the replica goes away while requests keep coming
                second.wait(30)
                time.sleep(3)
                stop.set()
                statuses = [status for future in futures for status in future.result()]
            assert statuses
            assert set(statuses) == {200}
            with tenant_context(stack.tenant):
                replicas = set(
                    InferenceRecord.objects.filter(request_id__in=answered).values_list("server_replica", flat=True)
                )
            assert replicas == {stack.iris_url, second_url}  # both took traffic before one went down
        finally:
            with tenant_context(stack.tenant):
                serving.server_update(actor=stack.owner, server=stack.cpu, replica_urls=[stack.iris_url])
            connection.set_schema_to_public()


def test_a_worker_killed_mid_request_leaves_a_worker_lost_record_in_bounded_time(stack, as_db):
    result: dict = {}

    def call() -> None:
        result["response"] = stack.predict(
            "sleepy", body={"dataframe_split": {"columns": ["x"], "data": [[1.0]]}, "params": {"delay": 2.5}}
        )

    started = time.monotonic()
    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)  # the request is at the model now
    for child in psutil.Process(stack.worker.pid).children(recursive=True):
        child.kill()
    caller.join(30)

    response = result["response"]
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "worker_lost"
    assert time.monotonic() - started < 3 + 2 + 3  # timeout + grace + slack
    record = stack.record(response.json()["error"]["request_id"])
    assert (record.status, record.error_code) == ("worker_lost", "worker_lost")
    stack.wait_for_worker()  # Celery replaced the killed pool processes


# --- the chain over live records -----------------------------------------------------------------------------


def test_the_live_chain_verifies_and_catches_an_edit(stack, as_db):
    from io import StringIO

    out = StringIO()
    call_command("verify_audit_chain", "--tenant", stack.tenant.schema_name, stdout=out)
    assert "ok" in out.getvalue().lower()

    with tenant_context(stack.tenant):
        db_tamper("UPDATE compliance_inferencerecord SET model_version = 7 WHERE sequence = 2")
    connection.set_schema_to_public()

    with pytest.raises(CommandError) as error:
        call_command("verify_audit_chain", "--tenant", stack.tenant.schema_name, stdout=StringIO())
    assert error.value.returncode == 1
    assert "record 2" in str(error.value)
