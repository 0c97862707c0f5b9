"""The protocol adapters against real servers on loopback: `mlflow models serve` for MLflow, and tiny local HTTP
servers for what a real server cannot be made to do on demand (answer late) or is not in the suite yet.

The kserve-v2 adapter's wire format is pinned here against a local server that answers a fixed Open Inference
Protocol response; `test_kserve_mlserver.py` checks the same adapter against a real MLServer.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from apps.inference.adapters import (
    ADAPTERS,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamRequest,
    UpstreamTimeout,
    UpstreamUnavailable,
    adapter_for,
)
from apps.inference.adapters.kserve import kserve_output, kserve_request_body
from apps.inference.payloads import payload_parse

EXAMPLE = Path(__file__).resolve().parents[2] / "example.json"
IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def upstream(base_url: str, body: dict, *, model_name: str = "iris", version: int | None = None, timeout=5.0):
    return UpstreamRequest(base_url, model_name, version, payload_parse(body), timeout, {})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def local_server() -> Iterator:
    """Start a `ThreadingHTTPServer` on loopback with a given handler; yields a starter returning its URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _answer(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


class SlowHandler(_Quiet):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(1.0)
        self._answer(200, {"predictions": [0]})


V2_ANSWER = {
    "model_name": "iris",
    "outputs": [{"name": "predict", "shape": [2, 1], "datatype": "INT64", "data": [0, 2]}],
}


class V2Handler(_Quiet):
    """Answers `/v2/models/<name>[/versions/<v>]/infer` with a fixed response, and records what it was sent."""

    seen: list[tuple[str, dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        parts = self.path.strip("/").split("/")
        if parts[:2] != ["v2", "models"] or parts[-1] != "infer":
            self._answer(404, {"error": f"Model not found: {self.path}"})
            return
        type(self).seen.append((self.path, body))
        self._answer(200, V2_ANSWER)


def test_mlflow_adapter_scores_the_iris_example_on_a_real_server(served_model):
    request = upstream(served_model, json.loads(EXAMPLE.read_text()))

    answer = adapter_for("mlflow").predict(request)

    assert len(answer.output) == 2
    assert all(label in (0, 1, 2) for label in answer.output)
    assert answer.status_code == 200
    assert answer.replica == served_model
    assert answer.upstream_ms > 0
    assert answer.prompt_tokens is None


def test_a_closed_port_is_unavailable_and_safe_to_retry_elsewhere():
    request = upstream(f"http://127.0.0.1:{closed_port()}", json.loads(EXAMPLE.read_text()))

    with pytest.raises(UpstreamUnavailable) as caught:
        adapter_for("mlflow").predict(request)

    assert caught.value.sent is False
    assert (caught.value.code, caught.value.status_code) == ("model_unavailable", 503)


def test_input_the_real_model_cannot_use_is_rejected_with_the_servers_message(served_model):
    """MLflow's scoring server answers 400 with `{"error_code": "BAD_REQUEST", "message": ...}` for input that
    does not fit the signature, so it reaches the client as a rejection, not as a server failure."""
    body = {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [["not a number", 3.5, 1.4, 0.2]]}}

    with pytest.raises(UpstreamRejected) as caught:
        adapter_for("mlflow").predict(upstream(served_model, body))

    assert caught.value.code == "upstream_rejected"
    assert caught.value.status_code == 400
    assert caught.value.message


def test_an_answer_slower_than_the_timeout_is_a_timeout(local_server):
    base = local_server(SlowHandler)
    request = upstream(base, json.loads(EXAMPLE.read_text()), timeout=0.2)

    started = time.perf_counter()
    with pytest.raises(UpstreamTimeout) as caught:
        adapter_for("mlflow").predict(request)

    assert time.perf_counter() - started < 0.9
    assert (caught.value.code, caught.value.status_code) == ("upstream_timeout", 504)


def test_an_unknown_protocol_has_no_adapter():
    with pytest.raises(KeyError):
        adapter_for("nope")
    assert set(ADAPTERS) >= {"mlflow", "kserve-v2"}


def test_a_table_becomes_one_typed_tensor_per_column():
    parsed = payload_parse(
        {
            "dataframe_records": [
                {"x": 1.5, "n": 1, "flag": True, "city": "Oslo", "mixed": 1},
                {"x": 2, "n": 7, "flag": False, "city": "Rome", "mixed": 2.5},
            ],
            "params": {"threshold": 0.5},
        }
    )

    assert kserve_request_body(parsed) == {
        "inputs": [
            {"name": "x", "shape": [2], "datatype": "FP64", "data": [1.5, 2.0]},
            {"name": "n", "shape": [2], "datatype": "INT64", "data": [1, 7]},
            {"name": "flag", "shape": [2], "datatype": "BOOL", "data": [True, False]},
            {"name": "city", "shape": [2], "datatype": "BYTES", "data": ["Oslo", "Rome"]},
            {"name": "mixed", "shape": [2], "datatype": "FP64", "data": [1.0, 2.5]},
        ],
        "parameters": {"threshold": 0.5, "content_type": "pd"},
    }


def test_a_tensor_becomes_one_flattened_input():
    parsed = payload_parse({"inputs": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 10], [11, 12]]]})

    assert kserve_request_body(parsed) == {
        "inputs": [{"name": "input-0", "shape": [2, 3, 2], "datatype": "INT64", "data": list(range(1, 13))}]
    }


def test_a_float_tensor_is_fp64():
    parsed = payload_parse({"instances": [[5.1, 3.5], [6, 3.0]]})

    assert kserve_request_body(parsed) == {
        "inputs": [{"name": "input-0", "shape": [2, 2], "datatype": "FP64", "data": [5.1, 3.5, 6.0, 3.0]}]
    }


def test_one_output_is_its_data_in_its_shape():
    assert kserve_output(V2_ANSWER) == [[0], [2]]
    flat = {"outputs": [{"name": "y", "shape": [3], "datatype": "FP64", "data": [0.1, 0.2, 0.3]}]}
    assert kserve_output(flat) == [0.1, 0.2, 0.3]


def test_several_outputs_are_a_dict_by_name():
    body = {
        "outputs": [
            {"name": "label", "shape": [2], "datatype": "INT64", "data": [0, 2]},
            {"name": "proba", "shape": [2, 3], "datatype": "FP64", "data": [0.9, 0.1, 0.0, 0.0, 0.2, 0.8]},
        ]
    }

    assert kserve_output(body) == {"label": [0, 2], "proba": [[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]]}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"outputs": []},
        {"outputs": [{"name": "y", "shape": [3], "data": [1, 2]}]},
        {"outputs": [{"name": "y", "data": [1, 2]}]},
    ],
)
def test_a_body_that_is_not_a_v2_answer_is_refused(body):
    with pytest.raises(ValueError):  # noqa: PT011
        kserve_output(body)


def test_kserve_adapter_calls_the_versioned_infer_path_and_reads_the_answer(local_server):
    V2Handler.seen = []
    base = local_server(V2Handler)

    answer = adapter_for("kserve-v2").predict(upstream(base, json.loads(EXAMPLE.read_text()), version=3))

    assert answer.output == [[0], [2]]
    assert answer.replica == base
    path, sent = V2Handler.seen[0]
    assert path == "/v2/models/iris/versions/3/infer"
    assert sent["parameters"] == {"content_type": "pd"}
    assert [tensor["name"] for tensor in sent["inputs"]] == IRIS_COLUMNS


def test_kserve_adapter_without_a_version_calls_the_model_path(local_server):
    V2Handler.seen = []
    base = local_server(V2Handler)

    adapter_for("kserve-v2").predict(upstream(base, {"inputs": [[5.1, 3.5, 1.4, 0.2]]}))

    assert V2Handler.seen[0][0] == "/v2/models/iris/infer"


def test_kserve_adapter_reports_an_unreadable_answer_as_a_failure(local_server):
    class Broken(_Quiet):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self._answer(200, {"outputs": "nope"})

    with pytest.raises(UpstreamFailed) as caught:
        adapter_for("kserve-v2").predict(upstream(local_server(Broken), json.loads(EXAMPLE.read_text())))

    assert (caught.value.code, caught.value.status_code) == ("upstream_error", 502)


def test_a_server_error_is_a_failure_and_a_client_error_keeps_its_status(local_server):
    class Failing(_Quiet):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            status = 500 if "versions" in self.path else 422
            self._answer(status, {"error": "bad tensor" if status == 422 else "boom"})

    base = local_server(Failing)
    adapter = adapter_for("kserve-v2")

    with pytest.raises(UpstreamFailed):
        adapter.predict(upstream(base, json.loads(EXAMPLE.read_text()), version=1))
    with pytest.raises(UpstreamRejected) as caught:
        adapter.predict(upstream(base, json.loads(EXAMPLE.read_text())))

    assert (caught.value.status_code, caught.value.message) == (422, "bad tensor")


class HeadersHandler(_Quiet):
    """Records the headers of each request it answers."""

    seen: list[dict] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append({name.lower(): value for name, value in self.headers.items()})
        self._answer(200, {"predictions": [1]})


def test_json_call_sends_what_the_client_sends_with_the_servers_own_headers_on_top(local_server):
    from apps.inference.http import http_client, upstream_send

    url = local_server(HeadersHandler) + "/invocations"
    HeadersHandler.seen.clear()
    http_client().post(url, json={"inputs": [[1]]}, headers={"Authorization": "Bearer s3cret"}, timeout=5)
    response = upstream_send(
        "POST", url, json={"inputs": [[1]]}, headers={"Authorization": "Bearer s3cret"}, timeout_seconds=5
    )
    upstream_send("POST", url, json={"inputs": [[1]]}, headers={"Accept": "application/json"}, timeout_seconds=5)

    by_client, direct, overridden = HeadersHandler.seen
    assert response.status_code == 200
    assert response.json() == {"predictions": [1]}
    assert direct == by_client
    assert direct["authorization"] == "Bearer s3cret"
    assert overridden["accept"] == "application/json"
