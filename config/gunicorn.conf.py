"""gunicorn settings, read from the environment so `make run`, Docker and production share one file."""

import multiprocessing
import os
import shutil
from pathlib import Path

from config.devstack import pid_alive

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000").split(",")
# ASGI by default: a streamed answer (SSE) then holds no worker or thread while it waits for the model's next
# chunk, and plain views still run concurrently, one thread per request. `sync` or `gthread` serve WSGI instead.
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "uvicorn_worker.UvicornWorker")
ASGI = "uvicorn" in worker_class.lower()
wsgi_app = "config.asgi:application" if ASGI else "config.wsgi:application"
if ASGI:
    # Request threads come and go under ASGI, so connections come from a pool rather than living in a thread.
    os.environ.setdefault("DATABASE_POOL", "1")
workers = int(os.environ.get("WEB_CONCURRENCY", min(2 * multiprocessing.cpu_count() + 1, 8)))
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 10
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-") or None  # empty: no access log
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
proc_name = "portal-web"

# --- Prometheus multiprocess mode -------------------------------------------------------------------
# prometheus_client decides at import whether samples go to files (one set per process, summed at scrape)
# or to process memory, by whether PROMETHEUS_MULTIPROC_DIR is set. So the master sets it before the first
# worker forks and never imports prometheus_client before that; Celery and other processes started
# elsewhere do not inherit it.

_BASE_DIR = Path(__file__).resolve().parent.parent


def _own_metrics_base() -> Path:
    return Path(os.environ.get("VAR_DIR", _BASE_DIR / "var")).resolve() / "prometheus"


def _metrics_dir() -> Path:
    """PROMETHEUS_MULTIPROC_DIR as given (emptied), or a fresh `web-<master pid>` folder under VAR_DIR.

    A folder per server, because two servers sharing VAR_DIR (the test suite, a second `make run`) would
    otherwise wipe and sum each other's samples; folders of servers that are gone are removed here.
    """
    base = _own_metrics_base()
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    # A master re-executed by USR2 inherits its parent's folder, which the parent's workers still use.
    inherited = Path(given).resolve().parent == base and Path(given).name.startswith("web-")
    if given and not inherited:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # only prometheus_client's files, whatever else the folder holds
            stale.unlink(missing_ok=True)
        return path
    base.mkdir(parents=True, exist_ok=True)
    for folder in base.glob("web-*"):
        pid = folder.name.removeprefix("web-")
        if not pid.isdigit() or not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    path = base / f"web-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def on_starting(server) -> None:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir())


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    path = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""))
    if path.name == f"web-{os.getpid()}" and path.parent == _own_metrics_base():
        shutil.rmtree(path, ignore_errors=True)


def post_worker_init(worker) -> None:
    """Move everything start-up allocated (Django, the URLconf, the apps) out of the collector's sight: a full
    collection then walks only what requests allocate, so it pauses requests for less (tail latency)."""
    import gc

    gc.collect()
    gc.freeze()
