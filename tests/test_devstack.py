"""`make run` end to end: embedded services, demo tenant, a scripted login, and Ctrl-C leaves nothing."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _processes_using(path: Path) -> list[int]:
    pids = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(path) in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            pids.append(process.pid)
    return pids


@pytest.fixture
def var_dir():
    path = ROOT / "var" / f"run-{uuid.uuid4().hex[:6]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_make_run_serves_the_demo_and_ctrl_c_leaves_nothing_behind(var_dir):
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        VAR_DIR=str(var_dir),
        GUNICORN_BIND=f"127.0.0.1:{port}",
        PORTAL_BASE_URL=f"http://localhost:{port}",
        WEB_CONCURRENCY="2",
        WORKER_CONCURRENCY="1",
        CELERY_BEAT_SCHEDULE=str(var_dir / "celerybeat-schedule"),
        DEMO_MODEL_PORT=str(free_port()),
        DEMO_OPENAI_PORT=str(free_port()),
    )
    launcher = subprocess.Popen(
        [sys.executable, "-m", "config.devstack", "run"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base, host = f"http://127.0.0.1:{port}", {"Host": f"demo.localhost:{port}"}
    try:
        deadline = time.monotonic() + 240
        status = None
        while time.monotonic() < deadline and launcher.poll() is None:
            try:
                status = requests.get(f"{base}/login/", headers=host, timeout=5).status_code
            except requests.RequestException:  # not listening yet, or a first answer slower than 5 s on a busy box
                status = None
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, "the demo tenant's login page never answered"

        demo = dict(line.split("=", 1) for line in (var_dir / "demo.env").read_text().splitlines() if "=" in line)
        assert demo["PORTAL_URL"] == f"http://demo.localhost:{port}"
        session = requests.Session()
        page = session.get(f"{base}/login/", headers=host, timeout=10)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        login = session.post(
            f"{base}/login/",
            headers=host,
            data={
                "username": demo["DEMO_USER"],
                "password": demo["DEMO_PASSWORD"],
                "csrfmiddlewaretoken": token,
            },
            allow_redirects=False,
            timeout=10,
        )
        assert login.status_code == 302
        dashboard = session.get(f"{base}/", headers=host, timeout=10)
        assert "Demo Corp" in dashboard.text
        me = requests.get(
            f"{base}/api/v1/me", headers={**host, "Authorization": f"Bearer {demo['DEMO_API_KEY']}"}, timeout=10
        )
        assert me.status_code == 200
        assert sorted(me.json()["key"]["scopes"]) == ["inference", "models:read"]

        # the demo model, really served by `mlflow models serve` on its own port
        models = requests.get(
            f"{base}/api/v1/models", headers={**host, "Authorization": f"Bearer {demo['DEMO_API_KEY']}"}, timeout=10
        ).json()
        by_name = {model["name"]: model for model in models["results"]}
        assert set(by_name) == {demo["DEMO_MODEL"], demo["DEMO_CHAT_MODEL"], demo["DEMO_EMBED_MODEL"]}
        assert by_name[demo["DEMO_MODEL"]]["aliases"] == {"champion": int(demo["DEMO_MODEL_VERSION"])}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{demo['DEMO_MODEL_URL']}/ping", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        answer = requests.post(
            f"{demo['DEMO_MODEL_URL']}/invocations",
            data=(ROOT / "example.json").read_bytes(),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert answer.status_code == 200
        assert len(answer.json()["predictions"]) == 2

        # the printed curl line's request, through the portal, a worker of pool `cpu` and that model server
        predicted = requests.post(
            f"{base}/api/v1/models/{demo['DEMO_MODEL']}/predict",
            data=(ROOT / "example.json").read_bytes(),
            headers={**host, "Authorization": f"Bearer {demo['DEMO_API_KEY']}", "Content-Type": "application/json"},
            timeout=60,
        )
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["model_version"] == demo["DEMO_MODEL_VERSION"]
        assert predicted.json()["output"] == answer.json()["predictions"]

        # the OpenAI-compatible API, through the official SDK, as the printed example runs it
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{demo['DEMO_OPENAI_URL']}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        example = subprocess.run(
            [sys.executable, "docs/examples/openai_sdk.py"],
            cwd=ROOT,
            env={**env, "VAR_DIR": str(var_dir)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert example.returncode == 0, example.stderr[-2000:]
        assert "chat: You said: hello from the openai SDK" in example.stdout
        assert "embedding: 384 dimensions" in example.stdout

        # `make worker POOL=...` joins the running launcher's services from another terminal
        extra = subprocess.Popen(
            [sys.executable, "-m", "config.devstack", "worker", "--pool", "gpu-x", "--concurrency", "1"],
            cwd=ROOT,
            env={key: value for key, value in env.items() if key != "DEBUG"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            joined = ""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "ready" not in joined:
                line = extra.stdout.readline()
                if not line:
                    break
                joined += line
            assert "pool.gpu-x" in joined
            assert "ready" in joined
        finally:
            os.killpg(extra.pid, signal.SIGTERM)
            extra.communicate(timeout=30)

        started = [child.pid for child in psutil.Process(launcher.pid).children(recursive=True)]
        started += _processes_using(var_dir)
        assert len(started) >= 4  # web master, worker, beat, redis, postgres at least
    finally:
        # Ctrl-C in a terminal signals the whole foreground process group.
        os.killpg(launcher.pid, signal.SIGINT)
        output, _ = launcher.communicate(timeout=90)
    assert launcher.returncode == 0, output[-3000:]
    time.sleep(1)
    assert [pid for pid in started if _alive(pid)] == []
    assert _processes_using(var_dir) == []
    # Web, worker, beat and the model server go first; the database and Redis they use go last.
    assert output.index("stopped web, worker, beat, model") < output.index("stopping embedded Redis")
    assert f"-d @example.json http://demo.localhost:{port}/api/v1/models/{demo['DEMO_MODEL']}/predict" in output
    assert not (var_dir / "services.env").exists()
    assert "/v1/chat/completions" in output
    assert output.index("stopping embedded Redis") < output.index("stopping embedded PostgreSQL")
