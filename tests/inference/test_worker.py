"""The worker's half of predict against real loopback HTTP servers: replica choice, retries, error mapping, record."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection
from django.utils import timezone

from apps.compliance.models import InferenceRecord
from apps.inference.balancer import circuit_states, replica_pick
from apps.inference.hashing import sha256_hex
from apps.inference.services import reply_key
from apps.inference.worker import predict_run
from config.redis import get_redis
from tests.helpers import free_port

BODY = {"dataframe_split": {"columns": ["x"], "data": [[1.0], [2.0]]}}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        stub = self.server.stub
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        stub["calls"] += 1
        time.sleep(stub.get("delay", 0))
        status, body = stub["status"], stub["body"]
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def model_server():
    """A loopback `/invocations` whose status, body and delay a test sets."""
    servers = []

    def start(status=200, body=None, delay=0.0) -> tuple[str, dict]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.stub = {"status": status, "body": body or {"predictions": [0, 1]}, "delay": delay, "calls": 0}
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server.stub

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _envelope(urls: list[str], *, timeout: float = 5.0, **overrides) -> dict:
    now = timezone.now()
    envelope = {
        "request_id": uuid.uuid4().hex,
        "model_name": "iris",
        "mlflow_name": "alpha__iris",
        "version": 2,
        "alias": "champion",
        "canary": False,
        "run_id": "run-2",
        "deployment_id": 5,
        "server_id": 9,
        "protocol": "mlflow",
        "replica_urls": urls,
        "auth_header": False,
        "deadline": time.time() + timeout,
        "body": BODY,
        "input_sha256": sha256_hex(BODY),
        "key_id": 1,
        "key_prefix": "pk_test",
        "user_id": 2,
        "client_ip": "127.0.0.1",
        "received_at": now.isoformat(),
        "dispatched_at": now.isoformat(),
        "prices": {"per_request": "0.001", "per_1k_tokens": "0", "per_gpu_second": "0.5"},
    }
    envelope.update(overrides)
    return envelope


def _reply(envelope: dict) -> dict:
    raw = get_redis().lpop(reply_key(connection.schema_name, envelope["request_id"]))
    return json.loads(raw)


def test_an_answer_is_recorded_with_hashes_cost_and_replica_then_replied(in_tenant_a, model_server):
    url, stub = model_server(body={"predictions": [0, 1]})
    envelope = _envelope([url])

    assert predict_run(envelope) == "ok"

    reply = _reply(envelope)
    assert reply["status"] == "ok"
    assert reply["output"] == [0, 1]
    record = InferenceRecord.objects.get(request_id=envelope["request_id"])
    assert (record.status, record.server_replica, record.model_version) == ("ok", url, 2)
    assert record.output_sha256 == sha256_hex([0, 1])
    assert record.input_sha256 == sha256_hex(BODY)
    assert record.cost >= record.cost.__class__("0.001")
    assert stub["calls"] == 1


def test_a_refused_connection_moves_on_to_the_next_replica(in_tenant_a, model_server):
    url, stub = model_server()
    closed = f"http://127.0.0.1:{free_port()}"
    for _ in range(5):  # whichever order the replicas are tried in, the closed one never fails a request
        envelope = _envelope([closed, url])
        assert predict_run(envelope) == "ok"
        assert InferenceRecord.objects.get(request_id=envelope["request_id"]).server_replica == url
    assert stub["calls"] == 5
    assert circuit_states(schema="alpha", server_id=9, urls=[closed])[closed].failures >= 1


def test_an_upstream_4xx_comes_back_as_that_4xx_with_its_message(in_tenant_a, model_server):
    url, _ = model_server(status=400, body={"error_code": "BAD_REQUEST", "message": "Incompatible input types"})
    envelope = _envelope([url])

    assert predict_run(envelope) == "failed"

    reply = _reply(envelope)
    assert (reply["http_status"], reply["code"]) == (400, "upstream_rejected")
    assert "Incompatible input types" in reply["message"]
    record = InferenceRecord.objects.get(request_id=envelope["request_id"])
    assert (record.status, record.error_code) == ("failed", "upstream_rejected")
    assert circuit_states(schema="alpha", server_id=9, urls=[url])[url].failures == 0  # a 4xx is no sickness


def test_a_request_that_was_sent_is_never_retried(in_tenant_a, model_server):
    slow, slow_stub = model_server(delay=1.5)
    fast, fast_stub = model_server()
    # Another request keeps the fast replica busy, so least-outstanding sends this one to the slow replica first.
    replica_pick(schema="alpha", server_id=9, urls=[fast], request_id="other", hold_seconds=30)
    envelope = _envelope([slow, fast], timeout=0.5)

    assert predict_run(envelope) == "timeout"

    reply = _reply(envelope)
    assert (reply["http_status"], reply["code"]) == (504, "upstream_timeout")
    assert slow_stub["calls"] == 1
    assert fast_stub["calls"] == 0


def test_a_5xx_is_a_502_and_counts_against_the_replica(in_tenant_a, model_server):
    url, _ = model_server(status=500, body={"message": "CUDA out of memory"})
    envelope = _envelope([url])

    assert predict_run(envelope) == "failed"

    reply = _reply(envelope)
    assert (reply["http_status"], reply["code"]) == (502, "upstream_error")
    assert "CUDA out of memory" in reply["message"]
    assert circuit_states(schema="alpha", server_id=9, urls=[url])[url].failures == 1


def test_every_replica_refusing_connections_is_a_503_with_retry_after(in_tenant_a):
    envelope = _envelope([f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"])

    assert predict_run(envelope) == "unavailable"

    reply = _reply(envelope)
    assert (reply["http_status"], reply["code"]) == (503, "model_unavailable")
    assert reply["retry_after"] >= 1
    assert InferenceRecord.objects.get(request_id=envelope["request_id"]).status == "unavailable"


def test_a_request_past_its_deadline_is_dropped_without_calling_the_model(in_tenant_a, model_server):
    url, stub = model_server()
    envelope = _envelope([url], deadline=time.time() - 1)

    assert predict_run(envelope) == "timeout"

    assert stub["calls"] == 0
    assert not InferenceRecord.objects.filter(request_id=envelope["request_id"]).exists()  # the web records it


def test_a_tenant_that_keeps_payloads_gets_them_encrypted_and_matching_the_record(in_tenant_a, model_server, settings):
    from apps.compliance.models import RetainedPayload
    from apps.compliance.payloads import payload_read
    from apps.inference.worker import output_hash

    settings.PAYLOAD_ENCRYPTION_KEYS = ["payload-key-for-tests-" + "x" * 20]
    url, _ = model_server(body={"predictions": [2, 0]})
    envelope = _envelope([url])
    connection.tenant.payload_retention = True
    try:
        assert predict_run(envelope) == "ok"
    finally:
        connection.tenant.payload_retention = False

    record = InferenceRecord.objects.get(request_id=envelope["request_id"])
    kept = payload_read(request_id=envelope["request_id"])
    assert kept == {"input": BODY, "output": [2, 0]}
    assert sha256_hex(kept["input"]) == record.input_sha256
    assert output_hash("predict", kept["output"]) == record.output_sha256
    assert b"dataframe_split" not in bytes(RetainedPayload.objects.get().ciphertext)


def test_payloads_are_not_kept_by_default(in_tenant_a, model_server, settings):
    from apps.compliance.models import RetainedPayload

    settings.PAYLOAD_ENCRYPTION_KEYS = ["payload-key-for-tests-" + "x" * 20]
    url, _ = model_server()

    assert predict_run(_envelope([url])) == "ok"

    assert not RetainedPayload.objects.exists()
