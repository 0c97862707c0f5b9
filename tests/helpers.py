"""Helpers shared by the tests (fixtures live in conftest.py)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
import requests
from django.conf import settings
from django.test import Client
from django_tenants.utils import tenant_context

PASSWORD = "correct-Horse-battery-9"


def host_of(tenant) -> str:
    return f"{tenant.schema_name}.{settings.PORTAL_DOMAIN}"


def bearer(secret: str) -> dict:
    """Test-client headers that send `secret` as the openai SDK does."""
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def login(client: Client, user) -> Client:
    """Log in through the real login view (axes and all), as a browser would."""
    response = client.post("/login/", {"username": user.email, "password": PASSWORD})
    assert response.status_code == 302, response.content[:500]
    return client


def current_totp_code(user) -> str:
    """The current code of `user`'s authenticator in the connection's schema (one is enrolled if they have none),
    usable at once: a code may be used once per 30 s step, and tests sign in more often than that."""
    from django_otp.oath import totp
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.filter(user_id=user.pk, confirmed=True).first()
    if device is None:
        device = TOTPDevice.objects.create(user_id=user.pk, name="Authenticator app", confirmed=True)
    device.last_t = -1
    device.throttle_reset()
    code = totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=device.drift)
    return f"{code:0{device.digits}d}"


def otp_login(client: Client, user) -> Client:
    """Log in as `login` does, then pass the second factor the way a member does: enrol an authenticator
    (or reuse the one the user has) and type its current code on the verify page."""
    login(client, user)
    tenant = client.get("/account/two-factor/verify/").wsgi_request.tenant
    with tenant_context(tenant):
        code = current_totp_code(user)
    response = client.post("/account/two-factor/verify/", {"code": code, "next": "/admin/"})
    assert response.status_code == 302, response.content[:500]
    return client


def db_tamper(sql: str, params: list | None = None) -> None:
    """Change the current schema's rows as the database superuser would, with the append-only triggers off."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        try:
            cursor.execute(sql, params)
        finally:
            cursor.execute("RESET session_replication_role")


def database_url_for_tests() -> str:
    """DATABASE_URL pointing at the test database, for processes the tests start (web, worker)."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path="/" + settings.DATABASES["default"]["NAME"]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def start_portal_server(*, workers: int = 2) -> Iterator[str]:
    """gunicorn on a free port against the test database; tasks it sends go to a throwaway queue."""
    port = free_port()
    queue = f"live-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_tests(),
        "DEBUG": "1",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "PORTAL_BASE_URL": f"http://localhost:{port}",
        "WEB_CONCURRENCY": str(workers),
        "CELERY_DEFAULT_QUEUE": queue,
        "GUNICORN_ACCESS_LOG": "",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py"],
        cwd=ROOT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/", headers={"Host": f"localhost:{port}"}, timeout=10).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            raise RuntimeError("the test portal server did not start")
        yield f"http://localhost:{port}"
    finally:
        server.terminate()
        server.wait(30)
        redis.Redis.from_url(os.environ["REDIS_URL"]).delete(queue)


def live_get(base: str, host: str, path: str, **kwargs) -> requests.Response:
    """A request to the live server for tenant host `host` (Python cannot resolve *.localhost by itself)."""
    port = urlsplit(base).port
    headers = {"Host": f"{host}:{port}", **kwargs.pop("headers", {})}
    method = kwargs.pop("method", "GET")
    return requests.request(method, f"http://127.0.0.1:{port}{path}", headers=headers, timeout=30, **kwargs)


@contextlib.contextmanager
def start_model_server(model_dir: Path, *, wait: bool = True) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `mlflow models serve` of `model_dir` on a free loopback port; yields (url, process)."""
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir), "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        if wait:
            model_server_wait(url)
        yield url, process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def model_server_wait(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/ping", timeout=2).ok:
                return
        except requests.RequestException:
            time.sleep(0.3)
    raise RuntimeError(f"the model server at {url} did not start")


def record_fields(**overrides) -> dict:
    """A complete, valid set of inference record fields (a fresh request id each time), with `overrides`."""
    from decimal import Decimal

    from django.utils import timezone

    fields = {
        "request_id": uuid.uuid4().hex,
        "key_id": 7,
        "key_prefix": "pk_test",
        "user_id": 3,
        "client_ip": "192.0.2.10",
        "model_name": "iris",
        "model_version": 2,
        "alias": "champion",
        "run_id": "abc123",
        "deployment_id": 11,
        "server_replica": "http://127.0.0.1:5001",
        "received_at": timezone.now(),
        "dispatched_at": timezone.now(),
        "answered_at": timezone.now(),
        "status": "ok",
        "input_sha256": "a" * 64,
        "output_sha256": "b" * 64,
        "latency_ms": 12,
        "upstream_ms": 9,
        "prompt_tokens": 4,
        "completion_tokens": 1,
        "cost": Decimal("0.0015"),
    }
    fields.update(overrides)
    return fields
