"""Added latency of predict through the portal, against calling the demo model server directly, in one run.

    make bench-predict
    make bench-predict BENCH_ARGS="--requests 300 1600 --rounds 4"
    (or: python -m config.devstack exec -- python bench/predict_latency.py [options])

Prepares the database and the demo (migrate_schemas, mlflow_prepare, seed_demo), starts gunicorn, a Celery worker
on `pool.cpu` and `mlflow models serve` of the demo model on free ports, and always stops them again. Then, for
each concurrency, it sends example.json (a) straight to the model server's /invocations and (b) to
POST /api/v1/models/<demo model>/predict with a bench key, in rounds that alternate the two so that drift on a
busy machine hits both alike. Latencies are taken client-side, one persistent connection per client thread; the
portal's cost is reported as added milliseconds and as a ratio to the direct call of the same run.

It also checks that every portal answer was a 200 and that the demo tenant's compliance record grew by exactly
the number of portal requests answered, and verifies the tenant's hash chain afterwards.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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

BODY = (ROOT / "example.json").read_bytes()
WORKER_NODE = f"bench-predict@{socket.gethostname()}"
BENCH_PLAN = "enterprise"
BENCH_KEY_RPM = 1_000_000
BENCH_KEY_NAME = "bench-predict"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="client threads per series")
    parser.add_argument("--requests", type=int, nargs="+", default=[300, 1600], help="requests per path, per level")
    parser.add_argument("--rounds", type=int, default=4, help="alternating direct/portal rounds per level")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up requests per client thread and path")
    parser.add_argument("--web-workers", type=int, default=4, help="gunicorn workers (WEB_CONCURRENCY)")
    parser.add_argument("--worker-pool", default="threads", choices=["prefork", "threads"], help="Celery --pool")
    parser.add_argument("--worker-concurrency", type=int, default=16, help="Celery worker concurrency (-c)")
    parser.add_argument("--model-workers", type=int, default=1, help="mlflow models serve -w")
    parser.add_argument("--debug", action="store_true", help="run the portal with DEBUG=1 instead of production-like")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, seconds")
    args = parser.parse_args(argv)
    if len(args.requests) != len(args.concurrency):
        parser.error("give one --requests value per --concurrency value")
    if min(args.concurrency) < 1 or args.rounds < 1:
        parser.error("concurrency and rounds must be positive")
    return args


# --- Requests and CPU ----------------------------------------------------------------------------------------


@dataclass
class Target:
    """One way of getting a prediction: where to POST, with which headers."""

    name: str
    url: str
    headers: dict[str, str]
    portal: bool = False


@dataclass
class PredictSeries(Series):
    """A series, with what each portal answer said of its own time."""

    server_ms: dict[str, tuple[float, float]] = field(default_factory=dict)  # request id -> (client, in predict())


def _one(client: httpx.Client, target: Target, series: PredictSeries, lock: threading.Lock) -> None:
    started = time.perf_counter()
    try:
        response = client.post(target.url, content=BODY, headers=target.headers)
    except httpx.HTTPError as error:
        with lock:
            series.errors += 1
            series.statuses[type(error).__name__] += 1
        return
    elapsed_ms = (time.perf_counter() - started) * 1000
    answer = response.json() if target.portal and response.status_code == 200 else {}
    with lock:
        series.statuses[response.status_code] += 1
        if response.status_code != 200:
            series.errors += 1
            return
        series.latencies_ms.append(elapsed_ms)
        if "request_id" in answer:
            series.server_ms[answer["request_id"]] = (elapsed_ms, float(answer["latency_ms"]))


def _sender(target: Target, series: PredictSeries) -> Callable[[httpx.Client, threading.Lock], None]:
    return lambda client, lock: _one(client, target, series, lock)


# --- The compliance record ------------------------------------------------------------------------------------


def time_split(tenant: object, series: PredictSeries) -> dict[str, float]:
    """Per-request medians of where a portal request's time went, from its answer and its compliance record."""
    from django_tenants.utils import tenant_context

    from apps.compliance.models import InferenceRecord

    with tenant_context(tenant):
        rows = InferenceRecord.objects.filter(request_id__in=list(series.server_ms)).values_list(
            "request_id", "received_at", "dispatched_at", "answered_at", "upstream_ms"
        )
        parts: dict[str, list[float]] = {name: [] for name in SPLIT_COLUMNS}
        for request_id, received, dispatched, answered, upstream in rows:
            client_ms, predict_ms = series.server_ms[request_id]
            checks = (dispatched - received).total_seconds() * 1000
            worker = (answered - dispatched).total_seconds() * 1000
            parts["outside predict()"].append(client_ms - predict_ms)
            parts["checks before enqueue"].append(checks)
            parts["enqueue to answered"].append(worker)
            parts["model call"].append(float(upstream or 0))
            parts["record + reply"].append(predict_ms - checks - worker)
    return {name: statistics.median(values) for name, values in parts.items() if values}


SPLIT_COLUMNS = ("outside predict()", "checks before enqueue", "enqueue to answered", "model call", "record + reply")


# --- The run --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupts_raise()
    web_port, model_port = free_port(), free_port()
    shown = portal_environment(
        debug=args.debug,
        web_port=web_port,
        web_workers=args.web_workers,
        extra={"DEMO_MODEL_PORT": str(model_port)},
    )
    bench_dir = var_dir() / "bench-predict"
    try:
        with processes(bench_dir) as running:
            return run(args, running, shown, web_port=web_port, model_port=model_port)
    except Interrupted:
        print("\ninterrupted; every process this run started is stopped", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"\nbench failed: {error}\n(logs of the processes in {bench_dir})", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, running: Processes, shown: dict[str, str], *, web_port: int, model_port: int) -> int:
    started = time.monotonic()
    manage("migrate_schemas", "--noinput", "-v", "0")
    manage("mlflow_prepare")
    manage("seed_demo")
    demo = demo_values()
    running.start(
        "model server",
        [PYTHON, "-m", "mlflow", "models", "serve", "-m", demo["DEMO_MODEL_PATH"], "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(model_port), "-w", str(args.model_workers)],
    )  # fmt: skip
    running.start("web", [PYTHON, "-m", "gunicorn", "-c", "config/gunicorn.conf.py"])
    running.start(
        "worker",
        celery_worker_command(node=WORKER_NODE, pool=args.worker_pool, concurrency=args.worker_concurrency),
    )

    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the settings' INFO root would log every request
    from config.celery import app as celery_app

    direct_url = f"http://127.0.0.1:{model_port}"
    host = f"{urlsplit(demo['PORTAL_URL']).hostname}:{web_port}"
    probe = httpx.Client(trust_env=False, timeout=5)
    wait_until("the model server", lambda: probe.get(f"{direct_url}/ping").status_code == 200, running)
    wait_until("the Celery worker", lambda: bool(celery_app.control.ping([WORKER_NODE], timeout=1.0)), running)

    access = bench_access(BENCH_PLAN, key_name=BENCH_KEY_NAME, requests_per_minute=BENCH_KEY_RPM)
    with access as (tenant, key_prefix, secret):
        auth = {"Host": host, "Authorization": f"Bearer {secret}"}
        me_url = f"http://127.0.0.1:{web_port}/api/v1/me"
        wait_until("gunicorn", lambda: probe.get(me_url, headers=auth).status_code == 200, running)
        json_type = {"Content-Type": "application/json"}
        targets = [
            Target("direct", f"{direct_url}/invocations", json_type),
            Target(
                "portal",
                f"http://127.0.0.1:{web_port}/api/v1/models/{demo['DEMO_MODEL']}/predict",
                {**json_type, **auth},
                portal=True,
            ),
        ]
        _print_settings(args, shown, demo, host, direct_url, key_prefix)
        print(f"(ready after {time.monotonic() - started:.0f} s; measuring)", flush=True)
        meter = CpuMeter({**{name: child.pid for name, child in running.children.items()}, **service_pids()})
        results = measure(args, targets, running, meter, lambda: records_count(tenant, key_prefix))
        return report(results, tenant, started)


def measure(
    args: argparse.Namespace,
    targets: list[Target],
    running: Processes,
    meter: CpuMeter,
    count_records: Callable[[], int],
) -> dict[int, dict[str, PredictSeries]]:
    """Warm both paths, then time them in alternating rounds at each concurrency."""
    stop = threading.Event()
    results: dict[int, dict[str, PredictSeries]] = {}
    try:
        for concurrency, total in zip(args.concurrency, args.requests, strict=True):
            clients = {t.name: clients_open(concurrency, args.timeout) for t in targets}
            for target in targets:
                warmup = PredictSeries()
                batch(clients[target.name], _sender(target, warmup), max(50, args.warmup * concurrency), warmup, stop)
            running.check()
            levels = {t.name: PredictSeries() for t in targets}
            records_before = count_records()
            paths = [(clients[t.name], _sender(t, levels[t.name]), levels[t.name]) for t in targets]
            rounds_alternating(paths, total, args.rounds, stop, meter)
            levels["portal"].records_grown = count_records() - records_before
            running.check()
            results[concurrency] = levels
            for client in (client for group in clients.values() for client in group):
                client.close()
            print(f"  concurrency {concurrency}: done", flush=True)
    finally:
        stop.set()
    return results


def _print_settings(
    args: argparse.Namespace, shown: dict[str, str], demo: dict[str, str], host: str, direct_url: str, prefix: str
) -> None:
    print("\n## Settings of this run\n")
    print(f"- command: bench/predict_latency.py {' '.join(sys.argv[1:])}".rstrip())
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
        f"- model server: mlflow models serve -m {demo['DEMO_MODEL_PATH']} --env-manager local -w {args.model_workers}"
        f" at {direct_url}\n"
        f"- portal: POST /api/v1/models/{demo['DEMO_MODEL']}/predict, Host {host}, bench key {prefix}"
        f" (requests_per_minute={BENCH_KEY_RPM:,})\n"
        f"- rate limit: the demo tenant runs on plan {BENCH_PLAN!r} for the bench (restored after), so its"
        f" per-tenant bucket still runs on every request but does not refuse the bench's volume\n"
        f"- body: example.json ({len(BODY)} bytes, 2 rows); {args.rounds} rounds per level, direct/portal order"
        f" alternating; warm-up: max(50, {args.warmup} x concurrency) requests per path before each level\n"
        f"- machine: {os.cpu_count()} CPUs, {sys.platform}, Python {sys.version.split()[0]};"
        f" load average before measuring: {load_average()}\n",
        flush=True,
    )


def report(results: dict[int, dict[str, PredictSeries]], tenant: object, started: float) -> int:
    from apps.compliance.records import chain_verify

    print("\n| concurrency | path | requests | errors | median ms | p99 ms | requests/s |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    stats: dict[tuple[int, str], tuple[float, float]] = {}
    for concurrency, levels in results.items():
        for name, series in levels.items():
            ordered = sorted(series.latencies_ms) or [math.nan]
            median, p99 = statistics.median(ordered), nearest_rank(ordered, 0.99)
            stats[concurrency, name] = (median, p99)
            rate = series.sent / series.wall_seconds if series.wall_seconds else math.nan
            print(
                f"| {concurrency} | {name} | {series.sent} | {series.errors} | {median:.2f} | {p99:.2f} | {rate:.0f} |"
            )
    print("\n| concurrency | added median ms | added p99 ms | portal / direct (median) |")
    print("| ---: | ---: | ---: | ---: |")
    for concurrency in results:
        (d_med, d_p99), (p_med, p_p99) = stats[concurrency, "direct"], stats[concurrency, "portal"]
        print(f"| {concurrency} | {p_med - d_med:.2f} | {p_p99 - d_p99:.2f} | {p_med / d_med:.1f}x |")

    ok = _checks(results, tenant, chain_verify(schema_name=tenant.schema_name))
    _print_split(results, tenant)
    print_cpu(
        [
            ((str(concurrency), path), series)
            for concurrency, levels in results.items()
            for path, series in levels.items()
        ],
        ("concurrency", "path"),
    )
    print(f"\nload average after measuring: {load_average()} (anything else running on the machine shows here)")
    print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'} ({time.monotonic() - started:.0f} s in all)")
    return 0 if ok else 1


def _checks(results: dict[int, dict[str, PredictSeries]], tenant: object, chain: object) -> bool:
    ok = chain.ok
    print("\n## Checks\n")
    for concurrency, levels in results.items():
        portal = levels["portal"]
        all_200 = set(portal.statuses) == {200}
        equal = portal.records_grown == portal.answered
        ok &= all_200 and equal
        print(
            f"- concurrency {concurrency}: portal answers by status {dict(portal.statuses)}"
            f" ({'all 200' if all_200 else 'NOT ALL 200'}); the bench key's compliance records grew by"
            f" {portal.records_grown} for {portal.answered} answered ({'equal' if equal else 'MISMATCH'})"
        )
    print(f"- demo tenant hash chain: {'intact' if chain.ok else chain.problem} ({chain.checked} records checked)")
    return ok


def _print_split(results: dict[int, dict[str, PredictSeries]], tenant: object) -> None:
    print(
        "\n## Where a portal request's time goes (per-request medians, ms)\n\n"
        "outside predict() = client round trip minus the view's own `latency_ms` (HTTP, gunicorn, middleware, key"
        " auth, rate limit, rendering); checks = received -> dispatched in the record (route, JSON, signature);"
        " enqueue to answered = Celery hand-off, worker, replica pick and the model call; model call = the"
        " record's `upstream_ms` (whole ms); record + reply = the rest of predict() (the worker's record append,"
        " its RPUSH, the web's BLPOP wake-up). Medians do not add up.\n"
    )
    print(f"| concurrency | client round trip | {' | '.join(SPLIT_COLUMNS)} |")
    print(f"| ---: | ---: |{' ---: |' * len(SPLIT_COLUMNS)}")
    for concurrency, levels in results.items():
        split = time_split(tenant, levels["portal"])
        client = statistics.median(levels["portal"].latencies_ms) if levels["portal"].latencies_ms else math.nan
        cells = " | ".join(f"{split.get(name, math.nan):.2f}" for name in SPLIT_COLUMNS)
        print(f"| {concurrency} | {client:.2f} | {cells} |")


if __name__ == "__main__":
    sys.exit(main())
