"""The gateway benchmark's own parts: reading wrk's output, the medians and tables, and the fast upstream, which
must answer what the portal's adapters and health probes expect or the benchmark measures errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from apps.inference.adapters.base import UpstreamRequest
from apps.inference.adapters.mlflow import MlflowAdapter
from apps.inference.adapters.openai import OpenAIAdapter
from apps.inference.payloads import payload_parse
from apps.serving.health import PROBE_PATHS
from bench.common import Memory
from bench.gateway import PathRuns, Spread, WrkResult, comparison_table, records_settled, sse_read
from bench.soak import tree_verdicts
from config.devstack import free_port

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:8000/invocations
  2 threads and 8 connections
  121171 requests in 2.10s, 10.63MB read
WRK_JSON {"requests": 300, "sent": 309, "non2xx": 2, "duration_us": 3000000, "bytes": 11147732, \
"socket_errors": {"connect": 0, "read": 1, "write": 0, "timeout": 3}, "status_errors": 2, \
"latency_us": {"p50": 1500, "p90": 4000, "p99": 12345, "mean": 2000.5, "max": 20000}}
"""


def _run(rate_requests: int, p50: float, p99: float) -> WrkResult:
    return WrkResult(
        requests=rate_requests, sent=rate_requests, non2xx=0, socket_errors=0, seconds=1.0, p50_ms=p50, p90_ms=p50,
        p99_ms=p99,
    )  # fmt: skip


def test_wrk_output_is_read_from_its_json_line():
    result = WrkResult.parse(WRK_OUTPUT)

    assert (result.requests, result.non2xx, result.socket_errors) == (300, 2, 4)
    assert (result.p50_ms, result.p90_ms, result.p99_ms) == (1.5, 4.0, 12.345)
    assert result.rate == 100
    assert result.in_flight == 5  # sent, less answered, less failed


def test_wrk_output_without_the_json_line_is_an_error():
    with pytest.raises(RuntimeError, match="WRK_JSON"):
        WrkResult.parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_a_figure_is_the_median_of_the_runs_with_their_range():
    spread = Spread.of([10.0, 30.0, 12.0])

    assert (spread.median, spread.low, spread.high) == (12.0, 10.0, 30.0)
    assert spread.relative == pytest.approx(20 / 12)
    assert spread.cell(1) == "12.0 (10.0 to 30.0)"


def test_the_comparison_is_portal_minus_direct_and_portal_over_direct():
    direct = PathRuns(runs=[_run(1000, 1.0, 3.0), _run(1200, 2.0, 5.0), _run(800, 1.5, 4.0)])
    portal = PathRuns(runs=[_run(100, 20.0, 60.0), _run(110, 22.0, 70.0), _run(90, 21.0, 65.0)])

    header, _, row = comparison_table({("predict", 8): {"direct": direct, "portal": portal}})

    assert "added p99 ms" in header
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # direct medians: 1000 req/s, p50 1.5, p99 4.0; portal: 100 req/s, p50 21, p99 65
    assert cells[:9] == ["predict", "8", "1000", "100", "10.00%", "1.50", "19.50", "19.50", "61.00"]


def test_records_are_counted_once_they_stop_growing():
    counts = iter([5, 7, 9, 9, 9, 9, 9])

    assert records_settled(lambda: next(counts), quiet=0.5, timeout=5) == 9


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                httpx.get(f"{url}/ping", timeout=0.5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(5)


def _request(url: str, **fields) -> UpstreamRequest:
    return UpstreamRequest(base_url=url, model_name="demo-chat", version=1, parsed=None, timeout_seconds=5, **fields)


def test_fast_upstream_answers_every_health_probe_the_portal_sends(upstream):
    for protocol, paths in PROBE_PATHS.items():
        assert httpx.get(upstream + paths[0]).status_code == 200, protocol


def test_fast_upstream_answers_predict_as_the_mlflow_adapter_reads_it(upstream):
    parsed = payload_parse(json.loads((ROOT / "example.json").read_text()))
    request = UpstreamRequest(base_url=upstream, model_name="iris", version=2, parsed=parsed, timeout_seconds=5)

    answer = MlflowAdapter().predict(request)

    assert answer.output == [0, 2]  # one prediction per row of example.json


def test_fast_upstream_chat_carries_the_usage_the_openai_adapter_records(upstream):
    payload = {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]}

    answer = OpenAIAdapter().predict(_request(upstream, operation="chat", payload=payload))

    assert answer.output["choices"][0]["message"]["content"]
    assert answer.output["model"] == "demo-chat"
    assert (answer.prompt_tokens, answer.completion_tokens) == (12, 5)


def test_fast_upstream_streams_chunks_then_a_usage_chunk(upstream):
    payload = {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]}

    chunks = list(OpenAIAdapter().stream(_request(upstream, operation="chat", payload=payload)))

    text = "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"])
    assert text == "The fast upstream answered this."
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 5


def test_fast_upstream_stream_is_timed_by_the_bench_reader(upstream):
    body = {"model": "demo-chat", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    with httpx.stream("POST", f"{upstream}/v1/chat/completions", json=body) as response:
        first_ms, done_ms, problem = sse_read(response.iter_lines(), started)

    assert problem is None
    assert 0 < first_ms <= done_ms


def test_fast_upstream_keeps_the_connection_and_refuses_unknown_paths(upstream):
    with httpx.Client() as client:
        assert client.get(f"{upstream}/v1/models").json()["data"][0]["id"] == "demo-chat"
        assert client.post(f"{upstream}/v1/chat/completions", content=b"not json").status_code == 400
        assert client.get(f"{upstream}/nowhere").status_code == 404
        assert client.post(f"{upstream}/invocations", content=b"{}").json() == {"predictions": [0, 2]}


def _processes(**trees: list[tuple[int, int, int]]) -> dict:
    """tree=[(pid, rss MiB, private MiB), ...] as the soak's snapshots hold them."""
    return {
        (tree, pid): ("process", Memory(rss=rss * MIB, private=private * MIB))
        for tree, members in trees.items()
        for pid, rss, private in members
    }


def test_soak_judges_private_memory_of_lasting_processes():
    start = _processes(PostgreSQL=[(1, 8, 1), (2, 20, 20)], web=[(3, 400, 300)])
    # The checkpointer's shared buffers raise its RSS; a backend opens; a web worker's own memory grows.
    end = _processes(PostgreSQL=[(1, 54, 1), (2, 20, 20), (4, 16, 2)], web=[(3, 420, 340)])

    ok, lines = tree_verdicts(start, end)

    assert not ok
    assert lines["PostgreSQL"].startswith("private 21 -> 21 MiB (+0.0%, flat) in the 2 processes")
    assert "1 new (2 MiB private)" in lines["PostgreSQL"]
    assert "GREW" in lines["web"]


def test_cpu_of_a_child_that_ends_mid_run_stays_counted_in_its_tree(tmp_path):
    import psutil

    from bench.common import CpuMeter

    done = tmp_path / "child-ended"
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    parent_script = (
        "import pathlib, subprocess, sys, time\n"
        "time.sleep(0.5)\n"
        f"subprocess.run([sys.executable, '-c', {burn!r}])\n"
        f"pathlib.Path({str(done)!r}).touch()\n"
        "time.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_script])
    try:
        meter = CpuMeter({"tree": parent.pid})
        before = meter.read()["tree"]
        deadline = time.monotonic() + 20
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done.exists()
        assert not psutil.Process(parent.pid).children()  # the child ended and its parent reaped it
        assert meter.read()["tree"] - before >= 0.3
    finally:
        parent.kill()
        parent.wait()
