"""Time to first token and latency of the OpenAI-compatible API through the portal, against the server directly.

    make bench-openai
    make bench-openai BENCH_ARGS="--concurrency 1 8 --requests 200 800 --delay-ms 5"
    (or: python -m config.devstack exec -- python bench/openai_latency.py [options])

Prepares the database and the demo (migrate_schemas, mlflow_prepare, seed_demo with DEMO_OPENAI_PORT set to a
free port), starts gunicorn, a Celery worker on `pool.cpu` and the demo OpenAI-compatible server
(`apps.serving.openai_demo_server`) on free ports, and always stops them again. Then, for each concurrency and
each kind of request, it sends the same body (a) straight to the demo server and (b) to the same path on the
demo tenant's host with a bench key, in rounds that alternate the two:

- chat: a non-streamed `POST /v1/chat/completions` with one short user message;
- chat-stream: the same with `stream: true` and `stream_options.include_usage`; timed to the first chunk that
  carries content (time to first token) and to `data: [DONE]` (the whole stream);
- embeddings: `POST /v1/embeddings` of one short sentence (real all-MiniLM-L6-v2 in numpy).

Latencies are taken client-side, one persistent connection per client thread; the portal's cost is reported as
added milliseconds and as a ratio to the direct call of the same run. Every answer is checked (the echoed text,
the usage chunk, 384 dimensions), the bench key's compliance records must grow by exactly the number of portal
requests answered, streamed records must carry the server's completion tokens and a cost, and the demo tenant's
hash chain must verify afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from bench.common import (
    PYTHON,
    CpuMeter,
    Interrupted,
    OneRequest,
    Processes,
    Series,
    batch,
    bench_access,
    celery_worker_command,
    clients_open,
    demo_values,
    gunicorn_worker_class,
    interrupts_raise,
    load_average,
    manage,
    nearest_rank,
    portal_environment,
    print_cpu,
    processes,
    records_count,
    rounds_alternating,
    service_pids,
    wait_until,
)
from config.devstack import free_port, var_dir

WORKER_NODE = f"bench-openai@{socket.gethostname()}"
BENCH_PLAN = "enterprise"
BENCH_KEY_RPM = 1_000_000
# A chat request reserves its prompt plus 512 tokens (no max_tokens) before dispatch; the key must not refuse.
BENCH_KEY_TPM = 1_000_000_000
BENCH_KEY_NAME = "bench-openai"
MESSAGE = "How long does the portal take to pass this on?"
EXPECTED_REPLY = f"You said: {MESSAGE}"
EMBED_INPUT = "Every request through the portal leaves one record in a hash chain."
EMBED_DIMENSIONS = 384
KINDS = ("chat", "chat-stream", "embeddings")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="client threads per series")
    parser.add_argument(
        "--requests", type=int, nargs="+", default=[200, 600], help="requests per path and kind, per level"
    )
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="which requests to time")
    parser.add_argument("--rounds", type=int, default=4, help="alternating direct/portal rounds per kind and level")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up requests per client thread, path and kind")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="the demo server's pause before each chunk")
    parser.add_argument(
        "--server-blas-threads",
        type=int,
        default=1,
        help="OPENBLAS_NUM_THREADS and OMP_NUM_THREADS of the demo server (0: the libraries' default, one per core)",
    )
    parser.add_argument("--web-workers", type=int, default=4, help="gunicorn workers (WEB_CONCURRENCY)")
    parser.add_argument("--worker-pool", default="threads", choices=["prefork", "threads"], help="Celery --pool")
    parser.add_argument("--worker-concurrency", type=int, default=16, help="Celery worker concurrency (-c)")
    parser.add_argument("--debug", action="store_true", help="run the portal with DEBUG=1 instead of production-like")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, seconds")
    args = parser.parse_args(argv)
    if len(args.requests) != len(args.concurrency):
        parser.error("give one --requests value per --concurrency value")
    if min(args.concurrency) < 1 or args.rounds < 1:
        parser.error("concurrency and rounds must be positive")
    args.kinds = [kind for kind in KINDS if kind in args.kinds]
    return args


# --- Requests --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One way of reaching the OpenAI API: a base URL and the headers every request carries."""

    name: str
    base_url: str
    headers: dict[str, str]
    portal: bool = False


@dataclass(frozen=True)
class Kind:
    """One kind of request: its path and body, the same on both targets."""

    name: str
    path: str
    body: bytes

    @property
    def stream(self) -> bool:
        return self.name == "chat-stream"


def kinds_for(demo: dict[str, str], names: list[str]) -> list[Kind]:
    chat = {"model": demo["DEMO_CHAT_MODEL"], "messages": [{"role": "user", "content": MESSAGE}]}
    bodies = {
        "chat": ("/v1/chat/completions", chat),
        "chat-stream": (
            "/v1/chat/completions",
            {**chat, "stream": True, "stream_options": {"include_usage": True}},
        ),
        "embeddings": ("/v1/embeddings", {"model": demo["DEMO_EMBED_MODEL"], "input": EMBED_INPUT}),
    }
    return [Kind(name, bodies[name][0], json.dumps(bodies[name][1]).encode()) for name in names]


@dataclass
class OpenAISeries(Series):
    """A series, with the time to first token of streams and what was wrong with answers that were not right."""

    first_token_ms: list[float] = field(default_factory=list)
    request_ms: dict[str, tuple[float, float | None]] = field(default_factory=dict)  # id -> (whole, first token)
    problems: Counter = field(default_factory=Counter)


def _answer_problem(kind: Kind, answer: object) -> str | None:
    """What is wrong with a non-streamed answer, or None."""
    try:
        if kind.name == "embeddings":
            (item,) = answer["data"]
            return None if len(item["embedding"]) == EMBED_DIMENSIONS else "embedding of the wrong size"
        content = answer["choices"][0]["message"]["content"]
        if content != EXPECTED_REPLY:
            return "unexpected reply"
        return None if answer["usage"]["completion_tokens"] > 0 else "no completion tokens"
    except (KeyError, IndexError, TypeError, ValueError):
        return "answer not in OpenAI's shape"


def _read_stream(response: httpx.Response, started: float) -> tuple[float | None, float | None, str | None]:
    """(ms to the first content, ms to [DONE], problem) of an SSE answer, read to its end so the connection
    stays open for the next request."""
    first_ms = done_ms = None
    texts: list[str] = []
    usage: dict | None = None
    problem = None
    for line in response.iter_lines():
        if not line.startswith("data:") or done_ms is not None:
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done_ms = (time.perf_counter() - started) * 1000
            continue
        chunk = json.loads(data)
        if "error" in chunk:
            problem = f"error event {chunk['error'].get('code')}"
            continue
        for choice in chunk.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                if first_ms is None:
                    first_ms = (time.perf_counter() - started) * 1000
                texts.append(content)
        usage = chunk.get("usage") or usage
    if problem is None:
        if done_ms is None or first_ms is None:
            problem = "stream ended without content or [DONE]"
        elif "".join(texts) != EXPECTED_REPLY:
            problem = "unexpected reply"
        elif not usage or not usage.get("completion_tokens"):
            problem = "no usage chunk"
    return first_ms, done_ms, problem


def _one(client: httpx.Client, target: Target, kind: Kind, series: OpenAISeries, lock: threading.Lock) -> None:
    url = target.base_url + kind.path
    first_ms = None
    problem = None
    started = time.perf_counter()
    try:
        if kind.stream:
            with client.stream("POST", url, content=kind.body, headers=target.headers) as response:
                if response.status_code == 200:
                    first_ms, whole_ms, problem = _read_stream(response, started)
                else:
                    response.read()
                    whole_ms = (time.perf_counter() - started) * 1000
        else:
            response = client.post(url, content=kind.body, headers=target.headers)
            whole_ms = (time.perf_counter() - started) * 1000
            if response.status_code == 200:
                problem = _answer_problem(kind, response.json())
    except (httpx.HTTPError, ValueError) as error:
        with lock:
            series.errors += 1
            series.statuses[type(error).__name__] += 1
        return
    with lock:
        series.statuses[response.status_code] += 1
        if response.status_code != 200 or problem is not None:
            series.errors += 1
            series.problems[problem or f"HTTP {response.status_code}"] += 1
            return
        series.latencies_ms.append(whole_ms)
        if first_ms is not None:
            series.first_token_ms.append(first_ms)
        if target.portal:
            series.request_ms[response.headers.get("X-Request-ID", "")] = (whole_ms, first_ms)


def _sender(target: Target, kind: Kind, series: OpenAISeries) -> OneRequest:
    return lambda client, lock: _one(client, target, kind, series, lock)


# --- The run --------------------------------------------------------------------------------------------------

Results = dict[int, dict[str, dict[str, OpenAISeries]]]  # concurrency -> kind -> path -> series


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupts_raise()
    web_port, openai_port = free_port(), free_port()
    shown = portal_environment(
        debug=args.debug,
        web_port=web_port,
        web_workers=args.web_workers,
        extra={"DEMO_OPENAI_PORT": str(openai_port)},
    )
    bench_dir = var_dir() / "bench-openai"
    try:
        with processes(bench_dir) as running:
            return run(args, running, shown, web_port=web_port, openai_port=openai_port)
    except Interrupted:
        print("\ninterrupted; every process this run started is stopped", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"\nbench failed: {error}\n(logs of the processes in {bench_dir})", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, running: Processes, shown: dict[str, str], *, web_port: int, openai_port: int) -> int:
    started = time.monotonic()
    manage("migrate_schemas", "--noinput", "-v", "0")
    manage("mlflow_prepare")
    manage("seed_demo")
    demo = demo_values()
    running.start("openai server", _openai_server_command(args, demo, openai_port), env=_server_env(args))
    running.start("web", [PYTHON, "-m", "gunicorn", "-c", "config/gunicorn.conf.py"])
    running.start(
        "worker",
        celery_worker_command(node=WORKER_NODE, pool=args.worker_pool, concurrency=args.worker_concurrency),
    )

    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the settings' INFO root would log every request
    from config.celery import app as celery_app

    direct_url = f"http://127.0.0.1:{openai_port}"
    if demo["DEMO_OPENAI_URL"] != direct_url:
        raise RuntimeError(f"seed_demo deployed the OpenAI models at {demo['DEMO_OPENAI_URL']}, not {direct_url}")
    host = f"{urlsplit(demo['PORTAL_URL']).hostname}:{web_port}"
    probe = httpx.Client(trust_env=False, timeout=5)
    wait_until("the OpenAI demo server", lambda: probe.get(f"{direct_url}/health").status_code == 200, running)
    wait_until("the Celery worker", lambda: bool(celery_app.control.ping([WORKER_NODE], timeout=1.0)), running)

    limits = {"requests_per_minute": BENCH_KEY_RPM, "tokens_per_minute": BENCH_KEY_TPM, "monthly_spend_limit": None}
    with bench_access(BENCH_PLAN, key_name=BENCH_KEY_NAME, **limits) as (tenant, key_prefix, secret):
        json_type = {"Content-Type": "application/json"}
        auth = {"Host": host, "Authorization": f"Bearer {secret}"}
        portal_url = f"http://127.0.0.1:{web_port}"
        wait_until("gunicorn", lambda: probe.get(f"{portal_url}/v1/models", headers=auth).status_code == 200, running)
        targets = [
            Target("direct", direct_url, json_type),
            Target("portal", portal_url, {**json_type, **auth}, portal=True),
        ]
        kinds = kinds_for(demo, args.kinds)
        _print_settings(args, shown, demo, host, direct_url, key_prefix)
        print(f"(ready after {time.monotonic() - started:.0f} s; measuring)", flush=True)
        meter = CpuMeter({**{name: child.pid for name, child in running.children.items()}, **service_pids()})
        results = measure(args, targets, kinds, running, meter, lambda: records_count(tenant, key_prefix))
        return report(results, tenant, key_prefix, started)


def _openai_server_command(args: argparse.Namespace, demo: dict[str, str], port: int) -> list[str]:
    return [
        PYTHON, "-m", "apps.serving.openai_demo_server", "--host", "127.0.0.1", "--port", str(port),
        "--chat-model", demo["DEMO_CHAT_MODEL"], "--embed-model", demo["DEMO_EMBED_MODEL"],
        "--delay-ms", f"{args.delay_ms:g}", "--log-level", "warning",
    ]  # fmt: skip


def _server_env(args: argparse.Namespace) -> dict[str, str]:
    """One BLAS thread per embedding request by default: with one per core, concurrent requests each start
    threads on every core and spin against each other, and the direct path's own tail (seconds at 8 clients on
    two cores) would drown what the portal adds."""
    if args.server_blas_threads <= 0:
        return {}
    return {name: str(args.server_blas_threads) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}


def measure(
    args: argparse.Namespace,
    targets: list[Target],
    kinds: list[Kind],
    running: Processes,
    meter: CpuMeter,
    count_records: Callable[[], int],
) -> Results:
    """At each concurrency and for each kind of request: warm both paths, then time them in alternating rounds."""
    stop = threading.Event()
    results: Results = {}
    try:
        for concurrency, total in zip(args.concurrency, args.requests, strict=True):
            clients = {t.name: clients_open(concurrency, args.timeout) for t in targets}
            results[concurrency] = {}
            for kind in kinds:
                for target in targets:
                    warmup = OpenAISeries()
                    count = max(20, args.warmup * concurrency)
                    batch(clients[target.name], _sender(target, kind, warmup), count, warmup, stop)
                    if warmup.errors:
                        raise RuntimeError(f"{kind.name} via {target.name} failed in the warm-up: {warmup.problems}")
                running.check()
                levels = {t.name: OpenAISeries() for t in targets}
                records_before = count_records()
                paths = [(clients[t.name], _sender(t, kind, levels[t.name]), levels[t.name]) for t in targets]
                rounds_alternating(paths, total, args.rounds, stop, meter)
                levels["portal"].records_grown = count_records() - records_before
                running.check()
                results[concurrency][kind.name] = levels
                print(f"  concurrency {concurrency}, {kind.name}: done", flush=True)
            for client in (client for group in clients.values() for client in group):
                client.close()
    finally:
        stop.set()
    return results


def _print_settings(
    args: argparse.Namespace, shown: dict[str, str], demo: dict[str, str], host: str, direct_url: str, prefix: str
) -> None:
    print("\n## Settings of this run\n")
    print(f"- command: bench/openai_latency.py {' '.join(sys.argv[1:])}".rstrip())
    for name, value in shown.items():
        print(f"- {name}={value!r}")
    if args.debug:
        print("- DEBUG=1: Django's debug mode (query logging and the like) is on in the web and worker processes")
    else:
        print(
            "- production-like: DEBUG=0; SECRET_KEY, API_KEY_PEPPER from the environment or VAR_DIR/bench-secrets.env"
        )
    print(
        f"- gunicorn: {args.web_workers} workers of {gunicorn_worker_class()}\n"
        f"- Celery worker: -Q pool.cpu --pool {args.worker_pool} -c {args.worker_concurrency} (log level WARNING)\n"
        f"- model server: apps.serving.openai_demo_server --delay-ms {args.delay_ms:g} at {direct_url},"
        f" {' '.join(f'{k}={v}' for k, v in _server_env(args).items()) or 'BLAS threads: the default'}"
        f" (chat model {demo['DEMO_CHAT_MODEL']}: echoes the message, one word a chunk;"
        f" embeddings {demo['DEMO_EMBED_MODEL']}: all-MiniLM-L6-v2, numpy)\n"
        f"- portal: the same paths on Host {host}, bench key {prefix} (requests_per_minute={BENCH_KEY_RPM:,},"
        f" tokens_per_minute={BENCH_KEY_TPM:,}, no spend limit)\n"
        f"- limits: the demo tenant runs on plan {BENCH_PLAN!r} for the bench (restored after), so its"
        f" request bucket and token and spend budgets still run on every request but do not refuse the bench\n"
        f"- chat message: {MESSAGE!r} (reply {len(EXPECTED_REPLY.split())} words: {len(EXPECTED_REPLY.split()) + 2}"
        f" chunks and a usage chunk when streamed); embeddings input: {EMBED_INPUT!r}\n"
        f"- {args.rounds} rounds per kind and level, direct/portal order alternating; warm-up: max(20, {args.warmup}"
        f" x concurrency) requests per path and kind before its rounds\n"
        f"- machine: {os.cpu_count()} CPUs, {sys.platform}, Python {sys.version.split()[0]};"
        f" load average before measuring: {load_average()}\n",
        flush=True,
    )


# --- The report -----------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values) or [math.nan]
    return statistics.median(ordered), nearest_rank(ordered, 0.99)


def _rate(series: Series) -> float:
    return series.sent / series.wall_seconds if series.wall_seconds else math.nan


def report(results: Results, tenant: object, key_prefix: str, started: float) -> int:
    from apps.compliance.records import chain_verify

    print("\n## Latency per request (client side, ms)\n")
    print("| concurrency | request | path | requests | errors | median ms | p99 ms | requests/s |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for concurrency, kinds in results.items():
        for kind, levels in kinds.items():
            if kind == "chat-stream":
                continue
            for path, series in levels.items():
                median, p99 = _stats(series.latencies_ms)
                print(
                    f"| {concurrency} | {kind} | {path} | {series.sent} | {series.errors} | {median:.2f} |"
                    f" {p99:.2f} | {_rate(series):.0f} |"
                )
    if any("chat-stream" in kinds for kinds in results.values()):
        print("\n## Streamed chat (client side, ms): time to first token and to `data: [DONE]`\n")
        print(
            "| concurrency | path | streams | errors | first token median | first token p99 | whole median |"
            " whole p99 | streams/s |"
        )
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for concurrency, kinds in results.items():
            for path, series in kinds.get("chat-stream", {}).items():
                first, whole = _stats(series.first_token_ms), _stats(series.latencies_ms)
                print(
                    f"| {concurrency} | {path} | {series.sent} | {series.errors} | {first[0]:.2f} | {first[1]:.2f} |"
                    f" {whole[0]:.2f} | {whole[1]:.2f} | {_rate(series):.0f} |"
                )

    print("\n## What the portal adds (portal - direct, same run)\n")
    print("| concurrency | measure | direct median ms | portal median ms | added median ms | added p99 ms | ratio |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for concurrency, kinds in results.items():
        for label, kind, values in _measures(kinds):
            (d_med, d_p99), (p_med, p_p99) = _stats(values(kind["direct"])), _stats(values(kind["portal"]))
            print(
                f"| {concurrency} | {label} | {d_med:.2f} | {p_med:.2f} | {p_med - d_med:.2f} | {p_p99 - d_p99:.2f} |"
                f" {p_med / d_med:.1f}x |"
            )

    ok = _checks(results, tenant, key_prefix, chain_verify(schema_name=tenant.schema_name))
    _print_split(results, tenant)
    print_cpu(
        [
            ((str(concurrency), kind, path), series)
            for concurrency, kinds in results.items()
            for kind, levels in kinds.items()
            for path, series in levels.items()
        ],
        ("concurrency", "request", "path"),
    )
    print(f"\nload average after measuring: {load_average()} (anything else running on the machine shows here)")
    print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'} ({time.monotonic() - started:.0f} s in all)")
    return 0 if ok else 1


def _measures(
    kinds: dict[str, dict[str, OpenAISeries]],
) -> Iterator[tuple[str, dict[str, OpenAISeries], Callable[[OpenAISeries], list[float]]]]:
    """(label, the kind's series by path, which values) for each row of the added-latency table."""
    for name, levels in kinds.items():
        if name == "chat-stream":
            yield "chat-stream: first token", levels, lambda series: series.first_token_ms
            yield "chat-stream: whole", levels, lambda series: series.latencies_ms
        else:
            yield name, levels, lambda series: series.latencies_ms


def _checks(results: Results, tenant: object, key_prefix: str, chain: object) -> bool:
    from django_tenants.utils import tenant_context

    from apps.compliance.models import InferenceRecord

    ok = chain.ok
    print("\n## Checks\n")
    for concurrency, kinds in results.items():
        for kind, levels in kinds.items():
            portal, direct = levels["portal"], levels["direct"]
            clean = portal.errors == 0 and direct.errors == 0 and set(portal.statuses) == {200}
            equal = portal.records_grown == portal.answered
            ok &= clean and equal
            problems = {**direct.problems, **portal.problems}
            print(
                f"- concurrency {concurrency}, {kind}: errors direct {direct.errors}, portal {portal.errors}"
                f"{f' {dict(problems)}' if problems else ''}; portal answers by status {dict(portal.statuses)};"
                f" the bench key's compliance records grew by {portal.records_grown} for {portal.answered} answered"
                f" ({'equal' if equal else 'MISMATCH'})"
            )
    streamed = [
        request_id
        for kinds in results.values()
        if "chat-stream" in kinds
        for request_id in kinds["chat-stream"]["portal"].request_ms
    ]
    with tenant_context(tenant):
        records = InferenceRecord.objects.filter(key_prefix=key_prefix)
        not_ok = records.exclude(status=InferenceRecord.Status.OK).count()
        if streamed:
            rows = records.filter(request_id__in=streamed)
            found = rows.count()
            counted = rows.filter(
                status=InferenceRecord.Status.OK, completion_tokens__gt=0, tokens_estimated=False, cost__gt=0
            ).count()
            ok &= found == counted == len(streamed)
            print(
                f"- streamed: {len(streamed)} answered streams, {found} records, {counted} of them ok with the"
                f" server's completion_tokens > 0 and cost > 0"
                f" ({'all' if found == counted == len(streamed) else 'NOT ALL'})"
            )
    ok &= not_ok == 0
    print(f"- records of the bench key with a status other than ok (warm-ups included): {not_ok}")
    print(f"- demo tenant hash chain: {'intact' if chain.ok else chain.problem} ({chain.checked} records checked)")
    return ok


SPLIT_COLUMNS = ("before enqueue", "enqueue to answered", "model call", "outside received to answered")


def _time_split(tenant: object, series: OpenAISeries) -> dict[str, float]:
    """Per-request medians of where a portal request's time went, from the client's timing and its record."""
    from django_tenants.utils import tenant_context

    from apps.compliance.models import InferenceRecord

    with tenant_context(tenant):
        rows = InferenceRecord.objects.filter(request_id__in=list(series.request_ms)).values_list(
            "request_id", "received_at", "dispatched_at", "answered_at", "upstream_ms"
        )
        parts: dict[str, list[float]] = {name: [] for name in SPLIT_COLUMNS}
        for request_id, received, dispatched, answered, upstream in rows:
            whole_ms, _ = series.request_ms[request_id]
            parts["before enqueue"].append((dispatched - received).total_seconds() * 1000)
            parts["enqueue to answered"].append((answered - dispatched).total_seconds() * 1000)
            parts["model call"].append(float(upstream or 0))
            parts["outside received to answered"].append(whole_ms - (answered - received).total_seconds() * 1000)
    return {name: statistics.median(values) for name, values in parts.items() if values}


def _print_split(results: Results, tenant: object) -> None:
    print(
        "\n## Where a portal request's time goes (per-request medians, ms)\n\n"
        "From each portal request's compliance record: before enqueue = received -> dispatched (JSON, route, token"
        " and spend reservation); enqueue to answered = dispatched -> answered (Celery hand-off, replica pick, the"
        " model call; for a stream, the whole stream relayed chunk by chunk to Redis); model call = the record's"
        " `upstream_ms` (whole ms); outside received to answered = the client's whole time minus received ->"
        " answered (HTTP, gunicorn, middleware, key auth, rate limit before the view; the record append, the reply"
        " through Redis and the response after). Medians do not add up.\n"
    )
    print(f"| concurrency | request | client first token | client whole | {' | '.join(SPLIT_COLUMNS)} |")
    print(f"| ---: | --- | ---: | ---: |{' ---: |' * len(SPLIT_COLUMNS)}")
    for concurrency, kinds in results.items():
        for kind, levels in kinds.items():
            portal = levels["portal"]
            split = _time_split(tenant, portal)
            first = f"{statistics.median(portal.first_token_ms):.2f}" if portal.first_token_ms else "-"
            whole = statistics.median(portal.latencies_ms) if portal.latencies_ms else math.nan
            cells = " | ".join(f"{split.get(name, math.nan):.2f}" for name in SPLIT_COLUMNS)
            print(f"| {concurrency} | {kind} | {first} | {whole:.2f} | {cells} |")


if __name__ == "__main__":
    sys.exit(main())
