"""What the end-to-end benchmarks share: their own processes, the bench key and plan, timed batches, CPU per request.

`bench/predict_latency.py` and `bench/openai_latency.py` start the portal the same way (production-like
settings, gunicorn, a Celery worker, a model server on free ports), give it the same room (a bench key and the
demo tenant on a larger plan, both undone after), time the portal against the model server called directly in
alternating rounds, and clean up on every exit. Import this after putting the repository root on `sys.path`.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from config.devstack import var_dir

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# gunicorn and uvicorn close a keep-alive connection after 5 idle seconds; a client that reuses one at that very
# moment gets "server disconnected" for a request the server never read. Dropping idle connections earlier on
# the client's side leaves no such race (a fresh connection on loopback costs a fraction of a millisecond).
CLIENT_LIMITS = httpx.Limits(max_connections=1, keepalive_expiry=2.0)
# Every bench key is named so; a run revokes the ones an earlier run of any bench could not.
BENCH_KEY_NAME_PREFIX = "bench-"
GUNICORN_DEFAULT_WORKER_CLASS = "uvicorn_worker.UvicornWorker"


class Interrupted(Exception):
    """Ctrl-C or SIGTERM turned into an exception, so that every clean-up runs."""


def _raise_interrupted(signum: int, frame: object) -> None:
    clean_up_uninterrupted()
    raise Interrupted(signal.Signals(signum).name)


def interrupts_raise() -> None:
    """Turn SIGINT and SIGTERM into `Interrupted` until the clean-up starts."""
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)


def clean_up_uninterrupted() -> None:
    """From here on the run only cleans up: a terminal's Ctrl-C reaches us and the launcher, which then sends
    SIGTERM too, and that second signal must not cut short the restoring of the demo tenant or the stopping."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# --- Environment and processes -------------------------------------------------------------------------------


def production_secrets(path: Path) -> dict[str, str]:
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


def portal_environment(*, debug: bool, web_port: int, web_workers: int, extra: dict[str, str]) -> dict[str, str]:
    """Set what every process of the run (this one included) must agree on; returns what to print.

    gunicorn keeps its own worker class (ASGI through uvicorn unless GUNICORN_WORKER_CLASS says otherwise), as
    in production; only the number of its workers is the bench's.
    """
    shown = {
        "DEBUG": "1" if debug else "0",
        "PORTAL_BASE_URL": f"http://localhost:{web_port}",
        **extra,
        "GUNICORN_BIND": f"127.0.0.1:{web_port}",
        "WEB_CONCURRENCY": str(web_workers),
        "GUNICORN_ACCESS_LOG": "",
    }
    os.environ.update(shown)
    if not debug:
        os.environ.update(production_secrets(var_dir() / "bench-secrets.env"))
        # Plain HTTP on loopback: in production a TLS-terminating proxy sits in front, so no redirect here.
        os.environ["SECURE_SSL_REDIRECT"] = "0"
        shown["SECURE_SSL_REDIRECT"] = "0"
    os.environ["PATH"] = f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # mlflow finds its tools
    return shown


def gunicorn_worker_class() -> str:
    """The worker class gunicorn will use, as `config/gunicorn.conf.py` reads it, for the printed settings."""
    chosen = os.environ.get("GUNICORN_WORKER_CLASS", GUNICORN_DEFAULT_WORKER_CLASS)
    if "uvicorn" in chosen.lower():
        return f"{chosen} (ASGI; one thread per request inside each worker, so GUNICORN_THREADS does not apply)"
    return f"{chosen} (WSGI) x GUNICORN_THREADS={os.environ.get('GUNICORN_THREADS', '1')}"


@dataclass
class Processes:
    """The children this run started; each in its own session, so a terminal's Ctrl-C reaches only us."""

    log_dir: Path
    children: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        """Start `command`, logging to `<name>.log`; `env` adds to this process's environment for it alone."""
        with (self.log_dir / f"{name}.log").open("wb") as log:
            self.children[name] = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **env} if env else None,
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
    """Children started inside are stopped on leaving, however the block is left."""
    log_dir.mkdir(parents=True, exist_ok=True)
    running = Processes(log_dir)
    try:
        yield running
    finally:
        clean_up_uninterrupted()
        running.stop_all()


def celery_worker_command(*, node: str, pool: str, concurrency: int) -> list[str]:
    """A worker on `pool.cpu`, where the demo's model servers are, without the chatter a bench does not need."""
    return [
        PYTHON, "-m", "celery", "-A", "config", "worker", "-Q", "pool.cpu", "-l", "WARNING", "-n", node,
        "--pool", pool, "-c", str(concurrency), "--without-heartbeat", "--without-mingle", "--without-gossip",
    ]  # fmt: skip


def manage(*args: str) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, check=True)


def demo_values() -> dict[str, str]:
    """What seed_demo wrote to VAR_DIR/demo.env."""
    return dict(line.split("=", 1) for line in (var_dir() / "demo.env").read_text().splitlines() if "=" in line)


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
class Series:
    """What one path did at one concurrency, accumulated over rounds."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: int = 0
    wall_seconds: float = 0.0
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

    On a small machine the portal path is CPU-bound at any real concurrency, so CPU per request says
    where its time goes; "rest of machine" is everything not named: the OS and whatever else runs there.

    A tree's figure includes its members' reaped children (`children_user`, `children_system`): a process that
    ends mid-run (a PostgreSQL backend the connection pool closed) leaves the tree but its CPU is added to its
    parent's, so it is counted once, in full, instead of being lost or subtracted.
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
                total += times.user + times.system + times.children_user + times.children_system
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


def clients_open(count: int, timeout: float) -> list[httpx.Client]:
    """One client per thread, each with one persistent connection."""
    return [httpx.Client(trust_env=False, timeout=timeout, limits=CLIENT_LIMITS) for _ in range(count)]


# One request: send it with this thread's client, then add what happened to a series under the lock.
OneRequest = Callable[[httpx.Client, threading.Lock], None]


def batch(
    clients: list[httpx.Client],
    one: OneRequest,
    total: int,
    series: Series,
    stop: threading.Event,
    meter: CpuMeter | None = None,
) -> None:
    """`total` requests spread over one thread per client, all released together; adds wall and CPU time."""
    concurrency = len(clients)
    shares = [total // concurrency + (index < total % concurrency) for index in range(concurrency)]
    lock = threading.Lock()
    gate = threading.Barrier(concurrency + 1)

    def client_loop(client: httpx.Client, share: int) -> None:
        gate.wait()
        for _ in range(share):
            if stop.is_set():
                return
            one(client, lock)

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


def rounds_alternating(
    paths: list[tuple[list[httpx.Client], OneRequest, Series]],
    total: int,
    rounds: int,
    stop: threading.Event,
    meter: CpuMeter | None,
) -> None:
    """`total` requests per path in `rounds` rounds whose order alternates (a, b, b, a, ...), so that a change
    in the machine's load during the run affects every path alike."""
    per_round = [total // rounds + (i < total % rounds) for i in range(rounds)]
    for index, share in enumerate(per_round):
        for clients, one, series in paths if index % 2 == 0 else paths[::-1]:
            batch(clients, one, share, series, stop, meter)


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def nearest_rank(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


def print_cpu(rows: list[tuple[tuple[str, ...], Series]], labels: tuple[str, ...]) -> None:
    """CPU per request of each process tree, one row per (labels, series) of the measured rounds."""
    first = rows[0][1]
    names = [name for name in first.cpu_seconds if name != "machine"]
    cores = os.cpu_count() or 1
    print(
        f"\n## CPU per request (ms of CPU, measured rounds only; {cores} cores)\n\n"
        "rest of machine = all CPU time of the machine minus the processes named (the OS, anything else running);"
        " busy = CPU used / (cores x wall time).\n"
    )
    print(f"| {' | '.join(labels)} | {' | '.join(names)} | rest of machine | total | busy |")
    print(f"| ---: |{' --- |' * (len(labels) - 1)}{' ---: |' * (len(names) + 3)}")
    for cells, series in rows:
        count = max(1, series.sent)
        machine = series.cpu_seconds["machine"]
        named = sum(series.cpu_seconds[name] for name in names)
        values = " | ".join(f"{series.cpu_seconds[name] * 1000 / count:.1f}" for name in names)
        busy = machine / (cores * series.wall_seconds) if series.wall_seconds else math.nan
        print(
            f"| {' | '.join(cells)} | {values} | {(machine - named) * 1000 / count:.1f} |"
            f" {machine * 1000 / count:.1f} | {busy:.0%} |"
        )


# --- The demo tenant --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_access(plan: str, *, key_name: str, **key_limits: int) -> Iterator[tuple[object, str, str]]:
    """A bench key with high per-key limits, and the demo tenant on `plan` while it runs; both undone after.

    The tenant's plan limits (TEAM: 3,000 requests a minute) would refuse a large run; a plan with higher
    limits keeps the same checks on every request, only with room for the benchmark's volume. The plan to go
    back to is kept in VAR_DIR until it is restored, so a run that could not clean up (killed, or its database
    stopped first) is put right by the next run of any bench, which also revokes bench keys left behind.
    """
    from django_tenants.utils import get_public_schema_name, schema_context, tenant_context

    from apps.accounts.models import User
    from apps.apikeys.models import ApiKey, Scope
    from apps.apikeys.services import apikey_create, apikey_revoke
    from apps.tenants.management.commands.seed_demo import DEMO_SLUG, OWNER_EMAIL
    from apps.tenants.models import Tenant

    if not key_name.startswith(BENCH_KEY_NAME_PREFIX):
        raise ValueError(f"bench key names start with {BENCH_KEY_NAME_PREFIX!r}")
    pending = _plan_to_restore_file()
    with schema_context(get_public_schema_name()):
        tenant = Tenant.objects.get(schema_name=DEMO_SLUG)
    original_plan = pending.read_text().strip() if pending.exists() else tenant.plan
    pending.write_text(original_plan)
    with tenant_context(tenant):
        owner = User.objects.get(email=OWNER_EMAIL)
        for stale in ApiKey.objects.filter(name__startswith=BENCH_KEY_NAME_PREFIX, revoked_at__isnull=True):
            apikey_revoke(actor=owner, key=stale)
        key, secret = apikey_create(actor=owner, name=key_name, scopes=[Scope.INFERENCE], **key_limits)
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


def _plan_to_restore_file() -> Path:
    """One file for every bench; one an older bench-predict left in its own folder is taken over."""
    path = var_dir() / "bench-demo-plan-to-restore"
    legacy = var_dir() / "bench-predict" / "demo-plan-to-restore"
    if legacy.exists() and not path.exists():
        legacy.rename(path)
    return path


def records_count(tenant: object, key_prefix: str) -> int:
    from django_tenants.utils import tenant_context

    from apps.compliance.models import InferenceRecord

    with tenant_context(tenant):
        return InferenceRecord.objects.filter(key_prefix=key_prefix).count()


# --- Memory -----------------------------------------------------------------------------------------------------


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants now; empty when it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@dataclass(frozen=True)
class Memory:
    """Resident bytes of a process, or of a tree summed, and the private part of them.

    `rss` counts every page in memory, shared ones included: PostgreSQL's shared buffers show in the RSS of
    each of its processes that touched them (its checkpointer's grows by what a checkpoint writes), and so do
    libraries. `private` is RSS less file-backed and shared-memory pages (Linux's RssAnon), what a leak grows.
    """

    rss: int = 0
    private: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.rss + other.rss, self.private + other.private)

    def peak(self, other: Memory) -> Memory:
        return Memory(max(self.rss, other.rss), max(self.private, other.private))


def memory_by_process(roots: dict[str, int]) -> dict[tuple[str, int], tuple[str, Memory]]:
    """(tree name, pid) -> (what the process is, its memory), for every process of each tree named."""
    found = {}
    for name, pid in roots.items():
        for member in process_tree(pid):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                command = " ".join(member.cmdline()) or member.name()
                info = member.memory_info()
                found[name, member.pid] = (_short_command(command), Memory(info.rss, info.rss - info.shared))
    return found


def memory_by_tree(roots: dict[str, int]) -> dict[str, Memory]:
    """Tree name -> the memory of all its processes together (a shared page counts once per process)."""
    totals: dict[str, Memory] = {}
    for (name, _), (_, memory) in memory_by_process(roots).items():
        totals[name] = totals.get(name, Memory()) + memory
    return totals


def _short_command(command: str) -> str:
    """Enough of a command line to tell processes of one tree apart (PostgreSQL names its backends' task)."""
    words = command.split()
    if words and Path(words[0]).name.startswith("python"):
        words = words[1:]
    elif words:
        words[0] = Path(words[0]).name
    text = " ".join(words)
    return text if len(text) <= 60 else text[:57] + "..."


class MemorySampler:
    """The peak memory of each named process tree (members summed), sampled on a thread of its own.

    A tree's peak is the largest sum seen at one moment, which is what the machine had to hold for it then.
    """

    def __init__(self, roots: dict[str, int], interval: float = 0.25) -> None:
        self.roots = roots
        self.interval = interval
        self.peaks: dict[str, Memory] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> dict[str, Memory]:
        totals = memory_by_tree(self.roots)
        for name, total in totals.items():
            self.peaks[name] = self.peaks.get(name, Memory()).peak(total)
        return totals

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def megabytes(value: float) -> str:
    return f"{value / 2**20:.0f}"


def machine_description() -> str:
    """Cores, CPU model and memory, as a benchmark's reader needs them to weigh its figures."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory().total / 2**30
    cores = len(os.sched_getaffinity(0))
    return f"{cores} CPUs ({model}), {memory:.0f} GiB RAM, {sys.platform}, Python {sys.version.split()[0]}"
