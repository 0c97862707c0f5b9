"""The kserve-v2 adapter against a real Open Inference Protocol server: MLServer serving a scikit-learn model.

MLServer needs older fastapi and protobuf than mlflow brings, so it lives in its own venv (`make mlserver-env`,
which `make test` runs first). The stub tests in `test_adapters.py` pin the wire format; these check that MLServer
reads it the way the adapter means it: a table as one tensor per column rebuilt into a DataFrame by the `pd`
content type, a tensor as one input.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from apps.inference.adapters import UpstreamFailed, UpstreamRejected, UpstreamRequest, adapter_for
from apps.inference.adapters.kserve import KServeAdapter
from apps.inference.http import http_client, http_transport
from apps.inference.payloads import payload_parse
from tests.helpers import ROOT, free_port

pytestmark = pytest.mark.slow

MLSERVER = ROOT / ".venv-mlserver" / "bin" / "mlserver"
IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [5.7, 2.6, 3.5, 1.0], [7.7, 2.8, 6.7, 2.0], [6.3, 2.5, 5.0, 1.9]]
START_SECONDS = 90


@pytest.fixture(scope="module")
def iris_model() -> LogisticRegression:
    frame = load_iris(as_frame=True)
    features = frame.data.set_axis(IRIS_COLUMNS, axis=1)
    return LogisticRegression(max_iter=500).fit(features, frame.target)


@pytest.fixture(scope="module")
def mlserver(iris_model, tmp_path_factory) -> Iterator[str]:
    """`mlserver start` on free loopback ports, one process (no parallel workers), metrics off; yields its URL."""
    if not MLSERVER.exists():
        pytest.skip(f"MLServer is not installed at {MLSERVER}; `make mlserver-env` installs it")
    root = tmp_path_factory.mktemp("mlserver")
    model_dir = root / "iris"
    model_dir.mkdir()
    joblib.dump(iris_model, model_dir / "model.joblib")
    model_settings = {
        "name": "iris",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings))
    port = free_port()
    server_settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_endpoint": None,
        "metrics_dir": str(root / "metrics"),
        "parallel_workers": 0,
    }
    (root / "settings.json").write_text(json.dumps(server_settings))
    log = root / "mlserver.log"
    with log.open("wb") as sink, _process_group([str(MLSERVER), "start", str(root)], root, sink):
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, log)
        yield url


@contextlib.contextmanager
def _process_group(command: list[str], cwd: Path, sink) -> Iterator[subprocess.Popen]:
    """Run `command` in a session of its own, so teardown stops it and anything it spawned together."""
    process = subprocess.Popen(command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _wait_ready(url: str, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + KServeAdapter.health_path, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"MLServer at {url} was not ready in {START_SECONDS}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(autouse=True)
def _fresh_connection_pool() -> Iterator[None]:
    """Each test starts on new connections: after a model error uvicorn closes the keep-alive connection without
    `Connection: close`, and a request that reuses it before the close lands is reset, which would leak into the
    next test as an unavailable server."""
    yield
    http_transport().close()
    http_transport.cache_clear()
    http_client.cache_clear()


def predict(url: str, body: dict, *, model_name: str = "iris", version: int | None = None):
    request = UpstreamRequest(url, model_name, version, payload_parse(body), 10.0, {})
    return adapter_for("kserve-v2").predict(request)


def expected_classes(model: LogisticRegression, rows: list[list] = ROWS) -> list[list[int]]:
    """What the local model predicts, in MLServer's shape: its numpy codec sends a 1-D result as (rows, 1)."""
    return [[int(label)] for label in model.predict(pd.DataFrame(rows, columns=IRIS_COLUMNS))]


def test_health_path_answers_on_a_real_server(mlserver):
    assert httpx.get(mlserver + KServeAdapter.health_path, timeout=5).status_code == 200


def test_a_dataframe_split_table_gets_the_local_models_classes(mlserver, iris_model):
    answer = predict(mlserver, {"dataframe_split": {"columns": IRIS_COLUMNS, "data": ROWS}})

    assert answer.output == expected_classes(iris_model)
    assert answer.status_code == 200
    assert answer.replica == mlserver
    assert answer.upstream_ms > 0


def test_dataframe_records_get_the_same_classes(mlserver, iris_model):
    records = [dict(zip(IRIS_COLUMNS, row, strict=True)) for row in ROWS]

    answer = predict(mlserver, {"dataframe_records": records})

    assert answer.output == expected_classes(iris_model)


def test_a_tensor_gets_the_same_classes(mlserver, iris_model):
    answer = predict(mlserver, {"inputs": ROWS})

    assert answer.output == expected_classes(iris_model)


def test_integer_columns_are_read_as_numbers(mlserver, iris_model):
    rows = [[5, 3, 1, 0], [7, 3, 6, 2]]

    answer = predict(mlserver, {"dataframe_split": {"columns": IRIS_COLUMNS, "data": rows}})

    assert answer.output == expected_classes(iris_model, rows)


def test_the_model_is_found_with_and_without_its_version(mlserver, iris_model):
    body = {"dataframe_split": {"columns": IRIS_COLUMNS, "data": ROWS}}

    assert predict(mlserver, body, version=1).output == expected_classes(iris_model)
    assert predict(mlserver, body).output == expected_classes(iris_model)


def test_client_params_travel_with_the_table(mlserver, iris_model):
    body = {"dataframe_split": {"columns": IRIS_COLUMNS, "data": ROWS}, "params": {"threshold": 0.5}}

    assert predict(mlserver, body).output == expected_classes(iris_model)


def test_an_unknown_model_is_rejected_with_the_servers_message(mlserver):
    body = {"dataframe_split": {"columns": IRIS_COLUMNS, "data": ROWS}}

    with pytest.raises(UpstreamRejected) as caught:
        predict(mlserver, body, model_name="nope")

    assert (caught.value.code, caught.value.status_code) == ("upstream_rejected", 404)
    assert caught.value.message == "Model nope not found"


def test_an_unknown_version_is_rejected_with_the_servers_message(mlserver):
    body = {"dataframe_split": {"columns": IRIS_COLUMNS, "data": ROWS}}

    with pytest.raises(UpstreamRejected) as caught:
        predict(mlserver, body, version=7)

    assert (caught.value.status_code, caught.value.message) == (404, "Model iris with version 7 not found")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"dataframe_split": {"columns": IRIS_COLUMNS[:3], "data": [r[:3] for r in ROWS]}}, id="3-cols"),
        pytest.param({"inputs": [[5.1, 3.5]]}, id="2-wide-tensor"),
        pytest.param({"dataframe_split": {"columns": IRIS_COLUMNS, "data": [["big", 3.5, 1.4, 0.2]]}}, id="text"),
        pytest.param({"dataframe_split": {"columns": IRIS_COLUMNS, "data": [[None, 3.5, 1.4, 0.2]]}}, id="null"),
    ],
)
def test_input_the_model_cannot_use_is_a_server_failure_not_a_crash(mlserver, body):
    """MLServer answers 500 for an exception in the model (it has no way to tell a bad input from a broken model),
    so the adapter reports an upstream failure."""
    with pytest.raises(UpstreamFailed) as caught:
        predict(mlserver, body)

    assert (caught.value.code, caught.value.status_code) == ("upstream_error", 502)
    assert caught.value.message.startswith("The model server failed (500): ")


def test_a_model_failure_names_the_models_exception_not_a_traceback(mlserver):
    body = {"dataframe_split": {"columns": IRIS_COLUMNS[:3], "data": [r[:3] for r in ROWS]}}

    with pytest.raises(UpstreamFailed) as caught:
        predict(mlserver, body)

    assert "Traceback" not in caught.value.message
    assert "feature names should match" in caught.value.message
