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
import contextlib
import logging
import math
import os
import secrets
import signal
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
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from config.devstack import free_port, var_dir

PYTHON = sys.executable
BODY = (ROOT / "example.json").read_bytes()
WORKER_NODE = f"bench-predict@{socket.gethostname()}"
BENCH_PLAN = "enterprise"
BENCH_KEY_RPM = 1_000_000
BENCH_KEY_NAME = "bench-predict"
# gunicorn and uvicorn close a keep-alive connection after 5 idle seconds; a client that reuses one at that very
# moment gets "server disconnected" for a request the server never read. Dropping idle connections earlier on
# the client's side leaves no such race (a fresh connection on loopback costs a fraction of a millisecond).
CLIENT_LIMITS = httpx.Limits(max_connections=1, keepalive_expiry=2.0)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM turned into an exception, so that every clean-up runs."""


def _raise_interrupted(signum: int, frame: object) -> None:
    clean_up_uninterrupted()
    raise Interrupted(signal.Signals(signum).name)


def clean_up_uninterrupted() -> None:
    """From here on the run only cleans up: a terminal's Ctrl-C reaches us and the launcher, which then sends
    SIGTERM too, and that second signal must not cut short the restoring of the demo tenant or the stopping."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="client threads per series")
    parser.add_argument("--requests", type=int, nargs="+", default=[300, 1600], help="requests per path, per level")
    parser.add_argument("--rounds", type=int, default=4, help="alternating direct/portal rounds per level")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up requests per client thread and path")
    parser.add_argument("--web-workers", type=int, default=4, help="gunicorn workers (WEB_CONCURRENCY)")
    parser.add_argument("--web-threads", type=int, default=4, help="threads per gunicorn worker (GUNICORN_THREADS)")
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


# --- Environment and processes -------------------------------------------------------------------------------


def _production_secrets(path: Path) -> dict[str, str]:
    """SECRET_KEY and API_KEY_PEPPER for DEBUG=0: the environment's, else ones generated once and kept in
    VAR_DIR, so that the demo key seed_demo wrote last time still verifies and a run does not mint a new one.
    Secrets from the environment are never written anywhere."""
    missing = [name for name in ("SECRET_KEY", "API_KEY_PEPPER") if not os.environ.get(name)]
    if not missing:
        return {}
    kept = {}
    if path.exists():
        kept = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    generated = {name: kept.get(name) or secrets.token_urlsafe(64) for name in missing}
    if any(kept.get(name) != value for name, value in generated.items()):
        path.write_text("".join(f"{name}={value}\n" for name, value in {**kept, **generated}.items()))
        path.chmod(0o600)
    return generated


def environment_prepare(args: argparse.Namespace, *, web_port: int, model_port: int) -> dict[str, str]:
    """Set what every process of the run (this one included) must agree on; returns what to print."""
    shown = {
        "DEBUG": "1" if args.debug else "0",
        "PORTAL_BASE_URL": f"http://localhost:{web_port}",
        "DEMO_MODEL_PORT": str(model_port),
        "GUNICORN_BIND": f"127.0.0.1:{web_port}",
        "WEB_CONCURRENCY": str(args.web_workers),
        "GUNICORN_THREADS": str(args.web_threads),
        "GUNICORN_ACCESS_LOG": "",
    }
    os.environ.update(shown)
    if not args.debug:
        os.environ.update(_production_secrets(var_dir() / "bench-secrets.env"))
        # Plain HTTP on loopback: in production a TLS-terminating proxy sits in front, so no redirect here.
        os.environ["SECURE_SSL_REDIRECT"] = "0"
        shown["SECURE_SSL_REDIRECT"] = "0"
    os.environ["PATH"] = f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # mlflow finds its tools
    return shown


@dataclass
class Processes:
    """The children this run started; each in its own session, so a terminal's Ctrl-C reaches only us."""

    log_dir: Path
    children: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, command: list[str]) -> None:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            self.children[name] = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def check(self) -> None:
        for name, child in self.children.items():
            if child.poll() is not None:
                raise RuntimeError(f"{name} exited with {child.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop_all(self) -> None:
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()


@contextlib.contextmanager
def processes(log_dir: Path) -> Iterator[Processes]:
    log_dir.mkdir(parents=True, exist_ok=True)
    running = Processes(log_dir)
    try:
        yield running
    finally:
        clean_up_uninterrupted()
        running.stop_all()


def manage(*args: str) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, check=True)


def wait_until(what: str, ready: Callable[[], bool], running: Processes, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running.check()
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what} was not ready after {timeout:.0f} s")


# --- Requests and CPU ----------------------------------------------------------------------------------------


@dataclass
class Target:
    """One way of getting a prediction: where to POST, with which headers."""

    name: str
    url: str
    headers: dict[str, str]
    portal: bool = False


@dataclass
class Series:
    """What one path did at one concurrency, accumulated over rounds."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: int = 0
    wall_seconds: float = 0.0
    server_ms: dict[str, tuple[float, float]] = field(default_factory=dict)  # request id -> (client, in predict())
    cpu_seconds: Counter = field(default_factory=Counter)
    records_grown: int = 0

    @property
    def sent(self) -> int:
        return len(self.latencies_ms) + self.errors

    @property
    def answered(self) -> int:
        return sum(count for status, count in self.statuses.items() if isinstance(status, int))


class CpuMeter:
    """CPU seconds (user + system) of each process tree named, of this client process and of the whole machine.

    On a two-core machine the portal path is CPU-bound at any real concurrency, so CPU per request says
    where its time goes; "rest of machine" is everything not named: the OS and whatever else runs there.
    """

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots

    @staticmethod
    def _tree(pid: int) -> float:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for member in members:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                times = member.cpu_times()
                total += times.user + times.system
        return total

    def read(self) -> dict[str, float]:
        values = {name: self._tree(pid) for name, pid in self.roots.items()}
        own = psutil.Process().cpu_times()
        values["bench client"] = own.user + own.system
        machine = psutil.cpu_times()
        # Linux counts guest time inside user time, and steal is the hypervisor's, not ours.
        values["machine"] = sum(getattr(machine, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))
        return values


def service_pids() -> dict[str, int]:
    """The embedded PostgreSQL and Redis of the launcher, when it started them (not external ones)."""
    pids = {}
    pidfile = var_dir() / "pgdata" / "postmaster.pid"
    if str(pidfile.parent) in os.environ.get("DATABASE_URL", "") and pidfile.exists():
        pids["PostgreSQL"] = int(pidfile.read_text().split()[0])
    with contextlib.suppress(psutil.Error):
        for sibling in psutil.Process(os.getppid()).children():
            if sibling.name().startswith("redis-server"):
                pids["Redis"] = sibling.pid
    return pids


def _one(client: httpx.Client, target: Target, series: Series, lock: threading.Lock) -> None:
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


def batch(
    clients: list[httpx.Client],
    target: Target,
    total: int,
    series: Series,
    stop: threading.Event,
    meter: CpuMeter | None = None,
) -> None:
    """`total` requests spread over one thread per client, all released together; adds to `series`."""
    concurrency = len(clients)
    shares = [total // concurrency + (index < total % concurrency) for index in range(concurrency)]
    lock = threading.Lock()
    gate = threading.Barrier(concurrency + 1)

    def client_loop(client: httpx.Client, share: int) -> None:
        gate.wait()
        for _ in range(share):
            if stop.is_set():
                return
            _one(client, target, series, lock)

    threads = [
        threading.Thread(target=client_loop, args=(client, share), daemon=True)
        for client, share in zip(clients, shares, strict=True)
    ]
    for thread in threads:
        thread.start()
    cpu_before = meter.read() if meter else {}
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)
    series.wall_seconds += time.perf_counter() - started
    if meter:
        series.cpu_seconds.update({name: value - cpu_before[name] for name, value in meter.read().items()})


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def nearest_rank(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


# --- The demo tenant --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_access(plan: str, state_dir: Path) -> Iterator[tuple[object, str, str]]:
    """A bench key with a high per-key limit, and the demo tenant on `plan` while it runs; both undone after.

    The tenant's plan bucket (TEAM: 3,000 requests a minute) would refuse a large run; a plan with a higher
    limit keeps the same limit check on every request, only with room for the benchmark's volume. The plan to
    go back to is kept in a file until it is restored, so a run that could not clean up (killed, or its
    database stopped first) is put right by the next one, which also revokes any bench key left behind.
    """
    from django_tenants.utils import get_public_schema_name, schema_context, tenant_context

    from apps.accounts.models import User
    from apps.apikeys.models import ApiKey, Scope
    from apps.apikeys.services import apikey_create, apikey_revoke
    from apps.tenants.management.commands.seed_demo import DEMO_SLUG, OWNER_EMAIL
    from apps.tenants.models import Tenant

    pending = state_dir / "demo-plan-to-restore"
    with schema_context(get_public_schema_name()):
        tenant = Tenant.objects.get(schema_name=DEMO_SLUG)
    original_plan = pending.read_text().strip() if pending.exists() else tenant.plan
    pending.write_text(original_plan)
    with tenant_context(tenant):
        owner = User.objects.get(email=OWNER_EMAIL)
        for stale in ApiKey.objects.filter(name=BENCH_KEY_NAME, revoked_at__isnull=True):
            apikey_revoke(actor=owner, key=stale)
        key, secret = apikey_create(
            actor=owner, name=BENCH_KEY_NAME, scopes=[Scope.INFERENCE], requests_per_minute=BENCH_KEY_RPM
        )
    try:
        with schema_context(get_public_schema_name()):
            tenant.plan = plan
            tenant.save(update_fields=["plan"])  # its post_save drops the cached host -> tenant entry
        yield tenant, key.prefix, secret
    finally:
        clean_up_uninterrupted()
        try:
            with schema_context(get_public_schema_name()):
                tenant.plan = original_plan
                tenant.save(update_fields=["plan"])
            pending.unlink()
            with tenant_context(tenant):
                apikey_revoke(actor=owner, key=key)
            print(f"restored the demo tenant's plan to {original_plan!r} and revoked bench key {key.prefix}")
        except Exception as error:  # the database may already be gone: say so and go on stopping
            print(
                f"could not restore the demo tenant (plan back to {original_plan!r}, revoke bench key {key.prefix}):"
                f" {type(error).__name__}; the next run does both",
                file=sys.stderr,
            )


def records_count(tenant: object, key_prefix: str) -> int:
    from django_tenants.utils import tenant_context

    from apps.compliance.models import InferenceRecord

    with tenant_context(tenant):
        return InferenceRecord.objects.filter(key_prefix=key_prefix).count()


def time_split(tenant: object, series: Series) -> dict[str, float]:
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
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    web_port, model_port = free_port(), free_port()
    shown = environment_prepare(args, web_port=web_port, model_port=model_port)
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
    demo = dict(line.split("=", 1) for line in (var_dir() / "demo.env").read_text().splitlines() if "=" in line)
    running.start(
        "model server",
        [PYTHON, "-m", "mlflow", "models", "serve", "-m", demo["DEMO_MODEL_PATH"], "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(model_port), "-w", str(args.model_workers)],
    )  # fmt: skip
    running.start("web", [PYTHON, "-m", "gunicorn", "-c", "config/gunicorn.conf.py"])
    running.start(
        "worker",
        [PYTHON, "-m", "celery", "-A", "config", "worker", "-Q", "pool.cpu", "-l", "WARNING", "-n", WORKER_NODE,
         "--pool", args.worker_pool, "-c", str(args.worker_concurrency),
         "--without-heartbeat", "--without-mingle", "--without-gossip"],
    )  # fmt: skip

    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the settings' INFO root would log every request
    from config.celery import app as celery_app

    direct_url = f"http://127.0.0.1:{model_port}"
    host = f"{urlsplit(demo['PORTAL_URL']).hostname}:{web_port}"
    probe = httpx.Client(trust_env=False, timeout=5)
    wait_until("the model server", lambda: probe.get(f"{direct_url}/ping").status_code == 200, running)
    wait_until("the Celery worker", lambda: bool(celery_app.control.ping([WORKER_NODE], timeout=1.0)), running)

    with bench_access(BENCH_PLAN, running.log_dir) as (tenant, key_prefix, secret):
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
) -> dict[int, dict[str, Series]]:
    """Warm both paths, then time them in alternating rounds at each concurrency."""
    stop = threading.Event()
    results: dict[int, dict[str, Series]] = {}
    try:
        for concurrency, total in zip(args.concurrency, args.requests, strict=True):
            clients = {
                t.name: [
                    httpx.Client(trust_env=False, timeout=args.timeout, limits=CLIENT_LIMITS)
                    for _ in range(concurrency)
                ]
                for t in targets
            }
            for target in targets:
                batch(clients[target.name], target, max(50, args.warmup * concurrency), Series(), stop)
            running.check()
            levels = {t.name: Series() for t in targets}
            records_before = count_records()
            per_round = [total // args.rounds + (i < total % args.rounds) for i in range(args.rounds)]
            for index, share in enumerate(per_round):
                for target in targets if index % 2 == 0 else targets[::-1]:
                    batch(clients[target.name], target, share, levels[target.name], stop, meter)
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
        f" load average before measuring: {_load()}\n",
        flush=True,
    )


def report(results: dict[int, dict[str, Series]], tenant: object, started: float) -> int:
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
    _print_cpu(results)
    print(f"\nload average after measuring: {_load()} (anything else running on the machine shows here)")
    print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'} ({time.monotonic() - started:.0f} s in all)")
    return 0 if ok else 1


def _checks(results: dict[int, dict[str, Series]], tenant: object, chain: object) -> bool:
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


def _print_split(results: dict[int, dict[str, Series]], tenant: object) -> None:
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


def _print_cpu(results: dict[int, dict[str, Series]]) -> None:
    first = next(iter(next(iter(results.values())).values()))
    names = [name for name in first.cpu_seconds if name != "machine"]
    cores = os.cpu_count() or 1
    print(
        f"\n## CPU per request (ms of CPU, measured rounds only; {cores} cores)\n\n"
        "rest of machine = all CPU time of the machine minus the processes named (the OS, anything else running);"
        " busy = CPU used / (cores x wall time).\n"
    )
    print(f"| concurrency | path | {' | '.join(names)} | rest of machine | total | busy |")
    print(f"| ---: | --- |{' ---: |' * (len(names) + 3)}")
    for concurrency, levels in results.items():
        for path, series in levels.items():
            count = max(1, series.sent)
            machine = series.cpu_seconds["machine"]
            named = sum(series.cpu_seconds[name] for name in names)
            cells = " | ".join(f"{series.cpu_seconds[name] * 1000 / count:.1f}" for name in names)
            busy = machine / (cores * series.wall_seconds) if series.wall_seconds else math.nan
            print(
                f"| {concurrency} | {path} | {cells} | {(machine - named) * 1000 / count:.1f} |"
                f" {machine * 1000 / count:.1f} | {busy:.0%} |"
            )


if __name__ == "__main__":
    sys.exit(main())
