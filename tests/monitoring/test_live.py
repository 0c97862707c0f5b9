"""Against a real gunicorn with several workers: every worker answers `/metrics` with the whole server's samples."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.helpers import ROOT, live_get, start_portal_server
from tests.monitoring.test_metrics import samples

pytestmark = pytest.mark.slow

SCRAPES = 30


def _scrape(base: str) -> dict:
    response = live_get(base, "localhost", "/metrics")
    assert response.status_code == 200, response.text[:500]
    return samples(response.text)


def _observe_in_another_process(folder: Path, *, model: str, status: str) -> None:
    """A process of its own records one prediction into the server's folder, as a gunicorn worker does."""
    code = (
        "from apps.monitoring.metrics import prediction_observe; "
        f"prediction_observe(tenant='alpha', model='{model}', version='2', status='{status}', "
        "total_seconds=0.3, upstream_seconds=0.2)"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)


def _server_folders() -> set[Path]:
    return set((Path(settings.VAR_DIR).resolve() / "prometheus").glob("web-*"))


def test_every_worker_answers_with_every_processs_samples(tmp_path, monkeypatch, django_db_setup):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    _observe_in_another_process(folder, model="before-start", status="ok")  # a previous run's leftovers
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    with start_portal_server(workers=3) as base:
        assert not any(name[0] == "portal_inference_requests_total" for name in _scrape(base)), "not emptied"
        for _ in range(2):
            _observe_in_another_process(folder, model="live", status="ok")
        _observe_in_another_process(folder, model="live", status="failed")
        ok = frozenset({"tenant": "alpha", "model": "live", "version": "2", "status": "ok"}.items())
        failed = frozenset({"tenant": "alpha", "model": "live", "version": "2", "status": "failed"}.items())
        latency = frozenset({"tenant": "alpha", "model": "live"}.items())
        for _ in range(SCRAPES):  # keep-alive off: the scrapes land on different workers
            found = _scrape(base)
            assert found[("portal_inference_requests_total", ok)] == 2
            assert found[("portal_inference_requests_total", failed)] == 1
            assert found[("portal_inference_latency_seconds_count", latency)] == 3
            assert found[("portal_inference_upstream_latency_seconds_bucket", latency | {("le", "0.25")})] == 3
            assert found[("portal_metrics_redis_up", frozenset())] == 1


def test_without_a_folder_given_each_server_gets_its_own_under_var_dir(django_db_setup, monkeypatch):
    """The default: a `web-<pid>` folder under $VAR_DIR/prometheus, gone when the server stops."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    before = _server_folders()
    with start_portal_server(workers=3) as base:
        for _ in range(SCRAPES):
            assert ("portal_metrics_redis_up", frozenset()) in _scrape(base)
        mine = _server_folders() - before
        assert len(mine) == 1
    deadline = time.monotonic() + 10
    while (_server_folders() & mine) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (_server_folders() & mine)
