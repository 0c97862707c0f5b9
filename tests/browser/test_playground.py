"""A developer in a real browser calls a model from the playground, then finds the call in the request log.

Headless Chromium against a real gunicorn, a real Celery worker for the server's pool and a real
`mlflow models serve`; everything is committed in a tenant of this module's own, dropped afterwards
(inference records are append-only, so they must never land in the shared tenants).
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from django.conf import settings
from django.contrib.auth.hashers import Argon2PasswordHasher
from django.db import connection
from django_tenants.utils import tenant_context
from mlflow.models import infer_signature

from apps.accounts.models import User
from apps.accounts.services import user_create
from apps.registry.models import ModelAlias, ModelVersion, RegisteredModel
from apps.serving.services import deployment_create, server_create
from apps.tenants.services import tenant_signup
from tests.browser.test_signup_flow import CHROMIUM, CHROMIUM_ARGS
from tests.helpers import PASSWORD, database_url_for_tests

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not os.environ.get("CI"),
        reason="Debian chromium is not installed (.ci/run installs it)",
    ),
]


def _iris_signature() -> dict:
    rows = pd.DataFrame([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], columns=COLUMNS)
    signature = infer_signature(rows, np.array([0, 2]))
    return {part: json.loads(text) for part, text in signature.to_dict().items() if text is not None}


@pytest.fixture(scope="module")
def playground_tenant(django_db_setup, django_db_blocker, served_model):
    """A tenant whose `iris` champion is deployed on the session's model server, and a worker for its pool."""
    slug, pool = f"play{uuid.uuid4().hex[:8]}", f"play{uuid.uuid4().hex[:8]}"
    with django_db_blocker.unblock():
        tenant = tenant_signup(
            name="Playground Co",
            slug=slug,
            owner_email=f"owner@{slug}.example",
            owner_password=PASSWORD,
            plan="enterprise",
        ).tenant
        with tenant_context(tenant):
            owner = User.objects.get(email=f"owner@{slug}.example")
            user_create(actor=owner, email=f"viewer@{slug}.example", password=PASSWORD, role="viewer")
            model = RegisteredModel.objects.create(name="iris", mlflow_name=f"{slug}__iris")
            version = ModelVersion.objects.create(
                model=model, version=1, run_id="run-1", source="file:///x", signature=_iris_signature()
            )
            ModelAlias.objects.create(model=model, alias="champion", version=version)
            # The suite hashes with MD5 for speed; the live server only knows the production hashers.
            hasher = Argon2PasswordHasher()
            User.objects.update(password=hasher.encode(PASSWORD, hasher.salt()))
            server = server_create(
                actor=owner, name="cpu", protocol="mlflow", gpu_pool=pool, replica_urls=[served_model]
            )
            deployment_create(actor=owner, model=model, server=server, alias="champion")
        connection.set_schema_to_public()
    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "CELERY_DEFAULT_QUEUE": f"{pool}-default"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", f"pool.{pool}", "--concurrency", "1",
         "--pool", "prefork", "-l", "WARNING", "--without-heartbeat", "--without-mingle", "--without-gossip",
         "-n", f"{pool}@%h"],
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    try:
        yield tenant
    finally:
        worker.terminate()
        worker.wait(30)
        with django_db_blocker.unblock():
            tenant.delete(force_drop=True)
            connection.set_schema_to_public()


def _log_in(page, base: str, slug: str, who: str) -> str:
    port = base.rsplit(":", 1)[1]
    origin = f"http://{slug}.{settings.PORTAL_DOMAIN}:{port}"
    page.goto(f"{origin}/login/")
    page.fill("#id_username", f"{who}@{slug}.example")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("nav >> text=Playground")
    return origin


def _browser_page(playwright, **context):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(60_000)
    return browser, page


def test_the_body_is_prefilled_and_checked_before_it_is_sent(live_portal, playground_tenant):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser, page = _browser_page(playwright)
        try:
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            _log_in(page, live_portal, playground_tenant.schema_name, "owner")

            page.click("nav >> text=Playground")

            body = json.loads(page.input_value("#playground-body"))
            assert body == {"dataframe_split": {"columns": COLUMNS, "data": [[0.0, 0.0, 0.0, 0.0]]}}
            assert page.is_visible("#playground-send")
            assert "$API_KEY" in page.text_content("#playground-curl")
            page.fill("#playground-body", "{not json")
            page.click("#playground-send")
            assert "not valid JSON" in page.text_content("#playground-status")
            assert page.is_hidden("#playground-result")
            assert "-d '{not json'" in page.text_content("#playground-curl")
            assert errors == []
        finally:
            browser.close()


def test_a_developer_sends_the_body_and_finds_the_call_in_the_log(live_portal, playground_tenant):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser, page = _browser_page(playwright)
        try:
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            origin = _log_in(page, live_portal, playground_tenant.schema_name, "owner")
            page.goto(f"{origin}/playground/?model=iris")
            rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
            page.fill("#playground-body", json.dumps({"dataframe_split": {"columns": COLUMNS, "data": rows}}))

            # The first call may wait for the worker to finish starting.
            for _ in range(5):
                page.click("#playground-send")
                page.wait_for_function("document.getElementById('playground-send').disabled === false")
                if "HTTP status200" in page.text_content("#playground-meta"):
                    break
                page.wait_for_timeout(1000)

            meta = page.text_content("#playground-meta")
            assert "HTTP status200" in meta, meta
            for fact in ("Modeliris", "Versionv1", "Aliaschampion", "Pinnedno", "Canaryno"):
                assert fact in meta, meta
            assert len(json.loads(page.text_content("#playground-output"))) == 2
            request_id = page.text_content("#playground-meta a")
            page.click("#playground-meta a")
            page.wait_for_selector("#record-hashes")
            assert request_id in page.text_content("h1")
            assert page.is_visible("#record-request .status-ok")

            page.goto(f"{origin}/playground/?model=iris")
            page.fill("#playground-body", json.dumps({"dataframe_split": {"columns": ["colour"], "data": [["red"]]}}))
            page.click("#playground-send")
            page.wait_for_function("document.getElementById('playground-meta').textContent.includes('Error')")
            assert "signature_mismatch" in page.text_content("#playground-meta")
            assert errors == []
        finally:
            browser.close()


def test_without_javascript_the_page_shows_the_body_and_the_curl_command(live_portal, playground_tenant):
    from playwright.sync_api import sync_playwright

    slug = playground_tenant.schema_name
    with sync_playwright() as playwright:
        browser, page = _browser_page(playwright, java_script_enabled=False)
        try:
            origin = _log_in(page, live_portal, slug, "owner")

            page.goto(f"{origin}/playground/?model=iris")

            assert json.loads(page.input_value("#playground-body"))["dataframe_split"]["columns"] == COLUMNS
            assert not page.is_visible("#playground-send")
            assert "Authorization: Bearer $API_KEY" in page.text_content("#playground-curl")
            assert "needs JavaScript" in page.text_content("noscript")

            viewer = browser.new_context().new_page()
            viewer.set_default_timeout(30_000)
            _log_in(viewer, live_portal, slug, "viewer")
            viewer.goto(f"{origin}/playground/?model=iris")
            assert viewer.query_selector("#playground-send") is None
            assert "$API_KEY" in viewer.text_content("#playground-curl")
        finally:
            browser.close()
