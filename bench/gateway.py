"""What the inference gateway adds to a model server that costs nothing: throughput and latency under wrk.

    make bench
    make bench BENCH_ARGS="--runs 5 --duration 10 --concurrency 1 8 32"
    make bench BENCH_ARGS="--web-workers 2 --worker-pool prefork --worker-concurrency 4"
    GUNICORN_WORKER_CLASS=gthread GUNICORN_THREADS=8 make bench
    (or: python -m config.devstack exec -- python bench/gateway.py [options])

Prepares the database and the demo (migrate_schemas, mlflow_prepare, seed_demo with DEMO_MODEL_PORT and
DEMO_OPENAI_PORT both on bench/fast_upstream.py), starts that upstream, gunicorn with its production settings
and a Celery worker on `pool.cpu`, production-like (DEBUG=0), and always stops them again. The upstream answers
at once, so what is measured is the gateway: key auth, rate limits, validation, the Celery hand-off, the
compliance record and the reply.

For each kind of request (predict: example.json to /invocations directly and to /api/v1/models/<demo
model>/predict through the portal; chat: a non-streamed /v1/chat/completions to both) and each concurrency,
wrk runs `--runs` times `--duration` seconds per path, alternating which path goes first; every figure is the
median of its runs, with their spread. Streamed chat is timed to its first token by a Python client. Every
answer must be a 2xx with no socket errors, the bench key's compliance records must grow by the answers, and
the demo tenant's hash chain must verify; the exit status says whether all of that held.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
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
    Memory,
    MemorySampler,
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
    machine_description,
    manage,
    megabytes,
    nearest_rank,
    portal_environment,
    processes,
    records_count,
    rounds_alternating,
    service_pids,
    wait_until,
)
from config.devstack import free_port, var_dir

BENCH_PLAN = "enterprise"
BENCH_KEY_LIMITS = {"requests_per_minute": 10_000_000, "tokens_per_minute": 1_000_000_000, "monthly_spend_limit": None}
LUA_SCRIPT = ROOT / "bench" / "wrk_post.lua"
PREDICT_BODY = ROOT / "example.json"
CHAT_MESSAGE = "How much does the gateway add to a model that answers at once?"
KINDS = ("predict", "chat", "stream")
PATHS = ("direct", "portal")
STACK = ("web", "worker", "Redis", "PostgreSQL")  # the processes whose CPU a portal request costs
WRK_TIMEOUT = "30s"


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the processes under test, shared with bench/soak.py."""
    parser.add_argument("--web-workers", type=int, default=4, help="gunicorn workers (WEB_CONCURRENCY)")
    parser.add_argument("--worker-pool", default="threads", choices=["prefork", "threads"], help="Celery --pool")
    parser.add_argument("--worker-concurrency", type=int, default=16, help="Celery worker concurrency (-c)")
    parser.add_argument("--upstream-processes", type=int, default=1, help="processes of bench/fast_upstream.py")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set for the portal's processes, e.g. GUNICORN_WORKER_CLASS=gthread (the environment's own pass too)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="wrk connections (-c)")
    parser.add_argument("--runs", type=int, default=3, help="wrk runs per path, kind and concurrency")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of one wrk run")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="which requests to measure")
    parser.add_argument(
        "--stream-requests", type=int, default=200, help="streamed chats per path and concurrency (Python client)"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up per kind and path")
    add_stack_arguments(parser)
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.runs < 1 or args.duration <= 0:
        parser.error("concurrency, runs and duration must be positive")
    args.kinds = [kind for kind in KINDS if kind in args.kinds]
    return args


def extra_environment(pairs: list[str]) -> dict[str, str]:
    """`NAME=VALUE` options as a mapping; anything else is refused before a process starts."""
    found = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name.isidentifier():
            raise SystemExit(f"--env wants NAME=VALUE, not {pair!r}")
        found[name] = value
    return found


# --- The stack ------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """The running processes under test, the bench key, and how to reach both paths."""

    running: Processes
    web_port: int
    upstream_port: int
    demo: dict[str, str]
    tenant: object
    key_prefix: str
    secret: str

    @property
    def direct_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    @property
    def portal_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def portal_headers(self) -> dict[str, str]:
        host = f"{urlsplit(self.demo['PORTAL_URL']).hostname}:{self.web_port}"
        return {"Host": host, "Authorization": f"Bearer {self.secret}", "Content-Type": "application/json"}

    def roots(self) -> dict[str, int]:
        """The process trees to measure: ours by name, and the embedded services when the launcher started them."""
        return {**{name: child.pid for name, child in self.running.children.items()}, **service_pids()}

    def records(self) -> int:
        return records_count(self.tenant, self.key_prefix)


def shown_settings(args: argparse.Namespace, shown: dict[str, str]) -> list[str]:
    """The settings of a run as lines, for its report: what is measured must be reproducible from them."""
    passed = {
        name: value
        for name, value in os.environ.items()
        if name.startswith(("GUNICORN_", "CELERY_", "DATABASE_POOL", "CONN_MAX_AGE")) and name not in shown
    }
    lines = [f"{name}={value!r}" for name, value in {**shown, **passed}.items()]
    lines += [
        "production-like: DEBUG=0; SECRET_KEY, API_KEY_PEPPER from the environment or VAR_DIR/bench-secrets.env",
        f"gunicorn: config/gunicorn.conf.py, {args.web_workers} workers of {gunicorn_worker_class()}",
        f"Celery worker: -Q pool.cpu --pool {args.worker_pool} -c {args.worker_concurrency} (log level WARNING)",
        f"upstream: bench/fast_upstream.py, {args.upstream_processes} process(es), fixed answers, no compute",
        f"limits: the demo tenant on plan {BENCH_PLAN!r} for the run (restored after); bench key"
        f" requests_per_minute={BENCH_KEY_LIMITS['requests_per_minute']:,}, tokens_per_minute="
        f"{BENCH_KEY_LIMITS['tokens_per_minute']:,}, no spend limit; every check still runs on every request",
        f"database: {'external (DATABASE_URL)' if 'pgdata' not in os.environ.get('DATABASE_URL', '') else 'embedded'};"
        f" Redis: {'embedded' if 'Redis' in service_pids() else 'external (REDIS_URL)'}",
        f"machine: {machine_description()}",
    ]
    return lines


@contextlib.contextmanager
def stack_started(args: argparse.Namespace, *, name: str, key_name: str) -> Iterator[tuple[Stack, list[str]]]:
    """Prepare the demo on a fast upstream, start it, gunicorn and a worker, hold a bench key; undo it all after.

    Yields the stack and the lines of its settings. Processes log to VAR_DIR/<name>/<process>.log.
    """
    upstream_port, web_port = free_port(), free_port()
    extra = {
        **extra_environment(args.env),
        "DEMO_MODEL_PORT": str(upstream_port),
        "DEMO_OPENAI_PORT": str(upstream_port),
    }
    shown = portal_environment(debug=False, web_port=web_port, web_workers=args.web_workers, extra=extra)
    node = f"{name}@{socket.gethostname()}"
    with processes(var_dir() / name) as running:
        manage("migrate_schemas", "--noinput", "-v", "0")
        manage("mlflow_prepare")
        manage("seed_demo")
        demo = demo_values()
        running.start(
            "upstream",
            [PYTHON, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(upstream_port),
             "--processes", str(args.upstream_processes),
             "--model", demo["DEMO_CHAT_MODEL"], "--model", demo["DEMO_EMBED_MODEL"]],
        )  # fmt: skip
        running.start("web", [PYTHON, "-m", "gunicorn", "-c", "config/gunicorn.conf.py"])
        running.start(
            "worker", celery_worker_command(node=node, pool=args.worker_pool, concurrency=args.worker_concurrency)
        )

        import django

        django.setup()
        logging.getLogger("httpx").setLevel(logging.WARNING)  # the settings' INFO root would log every request
        from config.celery import app as celery_app

        probe = httpx.Client(trust_env=False, timeout=5)
        upstream = f"http://127.0.0.1:{upstream_port}"
        wait_until("the fast upstream", lambda: probe.get(f"{upstream}/ping").status_code == 200, running)
        wait_until("the Celery worker", lambda: bool(celery_app.control.ping([node], timeout=1.0)), running)
        with bench_access(BENCH_PLAN, key_name=key_name, **BENCH_KEY_LIMITS) as (tenant, key_prefix, secret):
            stack = Stack(running, web_port, upstream_port, demo, tenant, key_prefix, secret)
            me_url = f"{stack.portal_url}/api/v1/me"
            wait_until("gunicorn", lambda: probe.get(me_url, headers=stack.portal_headers).status_code == 200, running)
            yield stack, shown_settings(args, shown)


def run_guarded(name: str, body: Callable[[], int]) -> int:
    """Run a bench's body with the stop-on-every-exit rules of bench/common.py, mapping failures to exit codes."""
    interrupts_raise()
    try:
        return body()
    except Interrupted:
        print("\ninterrupted; every process this run started is stopped", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"\nbench failed: {error}\n(logs of the processes in {var_dir() / name})", file=sys.stderr)
        return 1


# --- wrk ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    """One wrk run, from the JSON line bench/wrk_post.lua prints."""

    requests: int  # answers wrk read, whatever their status
    sent: int
    non2xx: int
    socket_errors: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    MARKER = "WRK_JSON "

    @classmethod
    def parse(cls, output: str) -> WrkResult:
        for line in output.splitlines():
            if line.startswith(cls.MARKER):
                data = json.loads(line.removeprefix(cls.MARKER))
                break
        else:
            raise RuntimeError(f"wrk printed no {cls.MARKER.strip()} line:\n{output[-2000:]}")
        latency = data["latency_us"]
        return cls(
            requests=data["requests"],
            sent=data["sent"],
            non2xx=data["non2xx"],
            socket_errors=sum(data["socket_errors"].values()),
            seconds=data["duration_us"] / 1e6,
            p50_ms=latency["p50"] / 1000,
            p90_ms=latency["p90"] / 1000,
            p99_ms=latency["p99"] / 1000,
        )

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else math.nan

    @property
    def in_flight(self) -> int:
        """Requests sent that wrk neither read an answer to nor counted as failed: cut off when it stopped."""
        return max(0, self.sent - self.requests - self.socket_errors)


def wrk_command(url: str, *, body: Path, headers: dict[str, str], concurrency: int, seconds: float) -> list[str]:
    return [
        "wrk", f"-t{min(concurrency, 2)}", f"-c{concurrency}", f"-d{seconds:g}s", f"--timeout={WRK_TIMEOUT}",
        "-s", str(LUA_SCRIPT), url, "--", str(body), *(f"{name}: {value}" for name, value in headers.items()),
    ]  # fmt: skip


def wrk_run(command: list[str]) -> tuple[WrkResult, float]:
    """Run wrk once; returns its result and the CPU seconds it used."""
    before = os.times()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    after = os.times()
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr.strip() or done.stdout[-2000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return WrkResult.parse(done.stdout), cpu


@dataclass
class PathRuns:
    """One path of one kind at one concurrency: its wrk runs and what they cost."""

    runs: list[WrkResult] = field(default_factory=list)
    cpu_seconds: Counter = field(default_factory=Counter)
    records_grown: int = 0

    @property
    def answered(self) -> int:
        return sum(run.requests for run in self.runs)

    @property
    def sent(self) -> int:
        return sum(run.sent for run in self.runs)

    @property
    def errors(self) -> int:
        return sum(run.non2xx + run.socket_errors for run in self.runs)

    def figure(self, name: str) -> Spread:
        return Spread.of([getattr(run, name) for run in self.runs])


@dataclass(frozen=True)
class Spread:
    """The median of several runs' values and how far apart the runs were."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            return cls(math.nan, math.nan, math.nan)
        return cls(statistics.median(values), min(values), max(values))

    @property
    def relative(self) -> float:
        """(max - min) / median: 0.1 means the runs were within 10% of each other's size."""
        return (self.high - self.low) / self.median if self.median else math.nan

    def cell(self, digits: int) -> str:
        return f"{self.median:.{digits}f} ({self.low:.{digits}f} to {self.high:.{digits}f})"


Results = dict[tuple[str, int], dict[str, PathRuns]]  # (kind, concurrency) -> path -> runs


def records_settled(count: Callable[[], int], *, quiet: float = 0.75, timeout: float = 15.0) -> int:
    """The record count once it has stopped growing: a request wrk cut off may still be recorded after it ends."""
    deadline = time.monotonic() + timeout
    last, still_since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = count()
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            break
    return last


# --- Streamed chat (first token) ---------------------------------------------------------------------------------


@dataclass
class StreamSeries(Series):
    """Streamed chats: `latencies_ms` holds the time to the first token, `whole_ms` the time to [DONE]."""

    whole_ms: list[float] = field(default_factory=list)
    problems: Counter = field(default_factory=Counter)


def sse_read(lines: Iterator[str], started: float) -> tuple[float | None, float | None, str | None]:
    """(ms to the first content, ms to [DONE], problem) of an OpenAI SSE answer, read to its end."""
    first_ms = done_ms = None
    usage = None
    for line in lines:
        if not line.startswith("data:") or done_ms is not None:
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done_ms = (time.perf_counter() - started) * 1000
            continue
        chunk = json.loads(data)
        if "error" in chunk:
            return first_ms, done_ms, f"error event {chunk['error'].get('code')}"
        for choice in chunk.get("choices") or []:
            if first_ms is None and (choice.get("delta") or {}).get("content"):
                first_ms = (time.perf_counter() - started) * 1000
        usage = chunk.get("usage") or usage
    if first_ms is None or done_ms is None:
        return first_ms, done_ms, "stream ended without content or [DONE]"
    if not usage or not usage.get("completion_tokens"):
        return first_ms, done_ms, "no usage chunk"
    return first_ms, done_ms, None


def stream_sender(url: str, headers: dict[str, str], *, body: bytes, series: StreamSeries) -> OneRequest:
    def one(client: httpx.Client, lock: threading.Lock) -> None:
        started = time.perf_counter()
        try:
            with client.stream("POST", url, content=body, headers=headers) as response:
                if response.status_code == 200:
                    first_ms, done_ms, problem = sse_read(response.iter_lines(), started)
                else:
                    response.read()
                    first_ms = done_ms = None
                    problem = f"HTTP {response.status_code}"
        except (httpx.HTTPError, ValueError) as error:
            with lock:
                series.errors += 1
                series.statuses[type(error).__name__] += 1
            return
        with lock:
            series.statuses[response.status_code] += 1
            if problem is not None:
                series.errors += 1
                series.problems[problem] += 1
                return
            series.latencies_ms.append(first_ms)
            series.whole_ms.append(done_ms)

    return one


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values) or [math.nan]
    return statistics.median(ordered), nearest_rank(ordered, 0.90), nearest_rank(ordered, 0.99)


# --- The run --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk (make bench installs it)", file=sys.stderr)
        return 2
    return run_guarded("bench-gateway", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with stack_started(args, name="bench-gateway", key_name="bench-gateway") as (stack, settings):
        bodies = _bodies(stack)
        print("\n## Settings of this run\n")
        print(f"- command: bench/gateway.py {' '.join(sys.argv[1:])}".rstrip())
        for line in settings:
            print(f"- {line}")
        print(
            f"- wrk: -t min(c, 2), -c c, {args.runs} runs of {args.duration:g} s per path (direct/portal order"
            f" alternating), --timeout {WRK_TIMEOUT}, bench/wrk_post.lua; {args.warmup:g} s of warm-up per kind and"
            f" path\n- load average before measuring: {load_average()}\n",
            flush=True,
        )
        print(f"(ready after {time.monotonic() - started:.0f} s; measuring)", flush=True)
        roots = stack.roots()
        with MemorySampler(roots) as memory:
            results = measure_wrk(args, stack, bodies, CpuMeter(roots))
            streams = measure_streams(args, stack) if "stream" in args.kinds else {}
        return report(args, stack, results, streams, memory.peaks, started)


def _bodies(stack: Stack) -> dict[str, Path]:
    chat = {"model": stack.demo["DEMO_CHAT_MODEL"], "messages": [{"role": "user", "content": CHAT_MESSAGE}]}
    chat_file = var_dir() / "bench-gateway" / "chat.json"
    chat_file.write_text(json.dumps(chat))
    return {"predict": PREDICT_BODY, "chat": chat_file}


def _targets(stack: Stack, kind: str) -> dict[str, tuple[str, dict[str, str]]]:
    """path -> (URL, headers) for one kind of request."""
    if kind == "predict":
        portal_path = f"/api/v1/models/{stack.demo['DEMO_MODEL']}/predict"
        return {
            "direct": (f"{stack.direct_url}/invocations", {"Content-Type": "application/json"}),
            "portal": (f"{stack.portal_url}{portal_path}", stack.portal_headers),
        }
    return {
        "direct": (f"{stack.direct_url}/v1/chat/completions", {"Content-Type": "application/json"}),
        "portal": (f"{stack.portal_url}/v1/chat/completions", stack.portal_headers),
    }


def measure_wrk(args: argparse.Namespace, stack: Stack, bodies: dict[str, Path], meter: CpuMeter) -> Results:
    results: Results = {}
    for kind in (kind for kind in args.kinds if kind != "stream"):
        targets = _targets(stack, kind)
        for path, (url, headers) in targets.items():
            command = wrk_command(url, body=bodies[kind], headers=headers, concurrency=8, seconds=args.warmup)
            warmup, _ = wrk_run(command)
            if warmup.non2xx or warmup.socket_errors:
                raise RuntimeError(f"{kind} via {path} failed in the warm-up: {warmup}")
        for concurrency in args.concurrency:
            levels = {path: PathRuns() for path in PATHS}
            for index in range(args.runs):
                for path in PATHS if index % 2 == 0 else PATHS[::-1]:
                    url, headers = targets[path]
                    command = wrk_command(
                        url, body=bodies[kind], headers=headers, concurrency=concurrency, seconds=args.duration
                    )
                    records_before = stack.records() if path == "portal" else 0
                    cpu_before = meter.read()
                    result, load_cpu = wrk_run(command)
                    cpu_after = meter.read()
                    if path == "portal":
                        levels[path].records_grown += records_settled(stack.records) - records_before
                    levels[path].runs.append(result)
                    levels[path].cpu_seconds.update(
                        {name: value - cpu_before[name] for name, value in cpu_after.items()} | {"wrk": load_cpu}
                    )
                    stack.running.check()
            results[kind, concurrency] = levels
            print(f"  {kind}, concurrency {concurrency}: done", flush=True)
    return results


def measure_streams(args: argparse.Namespace, stack: Stack) -> dict[int, dict[str, StreamSeries]]:
    """Streamed chats at each concurrency, direct and through the portal in alternating rounds."""
    body = json.dumps(
        {
            "model": stack.demo["DEMO_CHAT_MODEL"],
            "messages": [{"role": "user", "content": CHAT_MESSAGE}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    targets = {
        "direct": (f"{stack.direct_url}/v1/chat/completions", {"Content-Type": "application/json"}),
        "portal": (f"{stack.portal_url}/v1/chat/completions", stack.portal_headers),
    }
    stop = threading.Event()
    results: dict[int, dict[str, StreamSeries]] = {}
    try:
        for concurrency in args.concurrency:
            clients = {path: clients_open(concurrency, 60.0) for path in PATHS}
            for path, (url, headers) in targets.items():
                warmup = StreamSeries()
                batch(
                    clients[path],
                    stream_sender(url, headers, body=body, series=warmup),
                    max(20, 2 * concurrency),
                    warmup,
                    stop,
                )
                if warmup.errors:
                    raise RuntimeError(f"streamed chat via {path} failed in the warm-up: {dict(warmup.problems)}")
            levels = {path: StreamSeries() for path in PATHS}
            records_before = stack.records()
            paths = [(clients[p], stream_sender(*targets[p], body=body, series=levels[p]), levels[p]) for p in PATHS]
            rounds_alternating(paths, args.stream_requests, args.runs, stop, None)
            levels["portal"].records_grown = records_settled(stack.records) - records_before
            results[concurrency] = levels
            for client in (client for group in clients.values() for client in group):
                client.close()
            stack.running.check()
            print(f"  stream, concurrency {concurrency}: done", flush=True)
    finally:
        stop.set()
    return results


# --- The report -----------------------------------------------------------------------------------------------


def path_table(results: Results) -> list[str]:
    """Each path's medians over its runs, with the runs' range in brackets."""
    lines = [
        "| request | c | path | runs | answers | req/s | p50 ms | p90 ms | p99 ms | non-2xx | socket errors |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (kind, concurrency), levels in results.items():
        for path, runs in levels.items():
            figures = " | ".join(
                [runs.figure("rate").cell(0), *(runs.figure(name).cell(2) for name in ("p50_ms", "p90_ms", "p99_ms"))]
            )
            lines.append(
                f"| {kind} | {concurrency} | {path} | {len(runs.runs)} | {runs.answered} | {figures}"
                f" | {sum(r.non2xx for r in runs.runs)} | {sum(r.socket_errors for r in runs.runs)} |"
            )
    return lines


def comparison_table(results: Results) -> list[str]:
    """What the portal adds (b - a) and keeps of the throughput (b / a), from the medians of the runs."""
    lines = [
        "| request | c | direct req/s | portal req/s | portal / direct | direct p50 ms | added p50 ms | added p90 ms"
        " | added p99 ms | spread of runs: req/s, p99 (direct; portal) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for (kind, concurrency), levels in results.items():
        direct, portal = levels["direct"], levels["portal"]
        rate_d, rate_p = direct.figure("rate"), portal.figure("rate")
        added = {
            name: portal.figure(name).median - direct.figure(name).median for name in ("p50_ms", "p90_ms", "p99_ms")
        }
        spread = (
            f"{rate_d.relative:.0%}, {direct.figure('p99_ms').relative:.0%};"
            f" {rate_p.relative:.0%}, {portal.figure('p99_ms').relative:.0%}"
        )
        lines.append(
            f"| {kind} | {concurrency} | {rate_d.median:.0f} | {rate_p.median:.0f}"
            f" | {rate_p.median / rate_d.median:.2%}"
            f" | {direct.figure('p50_ms').median:.2f} | {added['p50_ms']:.2f} | {added['p90_ms']:.2f}"
            f" | {added['p99_ms']:.2f} | {spread} |"
        )
    return lines


def stream_table(streams: dict[int, dict[str, StreamSeries]]) -> list[str]:
    lines = [
        "| c | streams per path | direct first token p50 / p90 / p99 ms | portal first token p50 / p90 / p99 ms"
        " | added p50 / p90 / p99 ms | portal whole stream p50 ms |",
        "| ---: | ---: | --- | --- | --- | ---: |",
    ]
    for concurrency, levels in streams.items():
        direct, portal = percentiles(levels["direct"].latencies_ms), percentiles(levels["portal"].latencies_ms)
        added = " / ".join(f"{p - d:.2f}" for d, p in zip(direct, portal, strict=True))
        lines.append(
            f"| {concurrency} | {levels['portal'].sent} | {' / '.join(f'{v:.2f}' for v in direct)}"
            f" | {' / '.join(f'{v:.2f}' for v in portal)} | {added} | {percentiles(levels['portal'].whole_ms)[0]:.2f} |"
        )
    return lines


def cpu_table(results: Results, names: list[str]) -> list[str]:
    """CPU ms per answered request of each process tree, over all runs of a path; `stack` sums the portal's own."""
    stack_names = [name for name in STACK if name in names]
    others = [name for name in names if name not in STACK]
    lines = [
        f"| request | c | path | {' | '.join(stack_names)} | stack | {' | '.join(others)} | rest of machine |",
        f"| --- | ---: | --- |{' ---: |' * (len(stack_names) + 1 + len(others) + 1)}",
    ]
    for (kind, concurrency), levels in results.items():
        for path, runs in levels.items():
            count = max(1, runs.answered)
            cpu = runs.cpu_seconds
            named = sum(cpu[name] for name in names if name != "wrk") + cpu["bench client"]
            cells = [f"{cpu[name] * 1000 / count:.3f}" for name in stack_names]
            cells.append(f"{sum(cpu[name] for name in stack_names) * 1000 / count:.3f}")
            cells += [f"{cpu[name] * 1000 / count:.3f}" for name in others]
            rest = max(0.0, cpu["machine"] - named - cpu["wrk"])  # CPU times tick in 10 ms: never below 0
            lines.append(f"| {kind} | {concurrency} | {path} | {' | '.join(cells)} | {rest * 1000 / count:.3f} |")
    return lines


def memory_table(peaks: dict[str, Memory]) -> list[str]:
    """RSS, and its private part: a tree's RSS counts a shared page once per process (PostgreSQL's buffers)."""
    return [
        f"| | {' | '.join(peaks)} |",
        f"| --- |{' ---: |' * len(peaks)}",
        f"| RSS | {' | '.join(megabytes(memory.rss) for memory in peaks.values())} |",
        f"| private (RSS less shared pages) | {' | '.join(megabytes(memory.private) for memory in peaks.values())} |",
    ]


def checks(results: Results, streams: dict[int, dict[str, StreamSeries]], chain: object) -> tuple[bool, list[str]]:
    """Whether every answer was a 2xx, every portal answer left one record, and the chain verifies; with lines."""
    ok = bool(chain.ok)
    lines = []
    for (kind, concurrency), levels in results.items():
        portal = levels["portal"]
        errors = {path: runs.errors for path, runs in levels.items()}
        cut_off = sum(min(run.in_flight, concurrency) for run in portal.runs)  # one request per connection
        records_ok = portal.answered <= portal.records_grown <= portal.answered + cut_off
        ok &= not any(errors.values()) and records_ok
        lines.append(
            f"{kind}, c={concurrency}: errors (non-2xx + socket) direct {errors['direct']}, portal {errors['portal']};"
            f" compliance records grew by {portal.records_grown} for {portal.answered} answers read by wrk"
            f" (+{portal.records_grown - portal.answered} of the {cut_off} requests wrk cut off when it stopped)"
            f" ({'ok' if records_ok else 'MISMATCH'})"
        )
    for concurrency, levels in streams.items():
        portal = levels["portal"]
        errors = {path: series.errors for path, series in levels.items()}
        equal = portal.records_grown == portal.answered
        ok &= not any(errors.values()) and equal
        problems = {**levels["direct"].problems, **portal.problems}
        lines.append(
            f"stream, c={concurrency}: errors direct {errors['direct']}, portal {errors['portal']}"
            f"{f' {dict(problems)}' if problems else ''}; compliance records grew by {portal.records_grown} for"
            f" {portal.answered} answered ({'equal' if equal else 'MISMATCH'})"
        )
    lines.append(f"demo tenant hash chain: {'intact' if chain.ok else chain.problem} ({chain.checked} records checked)")
    return ok, lines


def report(
    args: argparse.Namespace,
    stack: Stack,
    results: Results,
    streams: dict[int, dict[str, StreamSeries]],
    peaks: dict[str, Memory],
    started: float,
) -> int:
    from apps.compliance.records import chain_verify

    if results:
        print("\n## Each path (median of the runs, their range in brackets)\n")
        print("\n".join(path_table(results)))
        print("\n## What the portal adds (portal - direct) and keeps (portal / direct)\n")
        print("\n".join(comparison_table(results)))
    if streams:
        print("\n## Streamed chat: time to first token (Python client, all runs pooled)\n")
        print("\n".join(stream_table(streams)))
    ok, lines = checks(results, streams, chain_verify(schema_name=stack.tenant.schema_name))
    print("\n## Checks\n")
    print("\n".join(f"- {line}" for line in lines))
    print("\n## Peak memory during the measurement (MiB, process trees summed, sampled every 0.25 s)\n")
    print("\n".join(memory_table(peaks)))
    if results:
        names = [name for name in next(iter(next(iter(results.values())).values())).cpu_seconds if name != "machine"]
        names = [name for name in names if name != "bench client"]
        print(
            "\n## CPU per answered request (ms of CPU, from the processes' own CPU times over the runs)\n\n"
            "stack = web + worker + Redis + PostgreSQL, what a portal request costs; the upstream and wrk are not"
            " part of it; rest of machine = everything else that ran (the OS, other work on the machine).\n"
        )
        print("\n".join(cpu_table(results, names)))
    print(f"\nload average after measuring: {load_average()} (anything else running on the machine shows here)")
    print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'} ({time.monotonic() - started:.0f} s in all)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
