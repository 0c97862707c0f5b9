"""A person in a real browser: signs up a tenant, logs in on its own host, invites a member.

Headless Debian Chromium driven by Playwright, against a real gunicorn serving the test database.
"""

import os
import shutil
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django_tenants.utils import tenant_context

from apps.accounts.models import User
from apps.accounts.roles import Role
from apps.accounts.selectors import user_role
from apps.tenants.models import Tenant
from tests.helpers import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not os.environ.get("CI"),
        reason="Debian chromium is not installed (.ci/run installs it)",
    ),
]


@pytest.fixture
def new_slug(django_db_blocker):
    slug = f"brw{uuid.uuid4().hex[:8]}"
    yield slug
    with django_db_blocker.unblock():
        tenant = Tenant.objects.filter(schema_name=slug).first()
        if tenant is not None:
            tenant.delete(force_drop=True)


def test_sign_up_log_in_and_invite_a_member(live_portal, new_slug, django_db_blocker):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread, so the ORM checks wait until it is closed.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            _sign_up_log_in_and_invite(browser.new_page(), live_portal, new_slug)
        finally:
            browser.close()

    with django_db_blocker.unblock():
        tenant = Tenant.objects.get(schema_name=new_slug)
        with tenant_context(tenant):
            owner = User.objects.get(email=f"owner@{new_slug}.example")
            newcomer = User.objects.get(email="newcomer@example.com")
            assert user_role(owner) == Role.OWNER
            assert user_role(newcomer) == Role.VIEWER
            assert newcomer.invited_by == owner
            assert not newcomer.has_usable_password()


def _sign_up_log_in_and_invite(page, portal_server: str, slug: str) -> None:
    page.set_default_timeout(30_000)
    owner_email = f"owner@{slug}.example"
    page.goto(f"{portal_server}/")
    page.click("text=Create your organisation")
    page.fill("#id_name", "Browser Test Co")
    page.fill("#id_slug", slug)
    page.fill("#id_email", owner_email)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#tenant-login")
    assert "Browser Test Co is ready" in page.text_content("h1")

    page.click("#tenant-login")
    assert page.url.startswith(f"http://{slug}.{settings.PORTAL_DOMAIN}:")
    page.fill("#id_username", owner_email)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#count-members")
    assert page.text_content("#count-members").strip() == "1"

    page.click("nav >> text=Members")
    page.fill("#id_email", "newcomer@example.com")
    page.select_option("#id_role", "viewer")
    page.click("text=Send invitation")
    page.wait_for_selector("tr[data-email='newcomer@example.com']")
    assert "Invited newcomer@example.com" in page.text_content(".flash-success")
    screenshots = ROOT / "var" / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / "members.png"), full_page=True)


def test_chromium_is_present_in_ci():
    assert shutil.which("chromium") or not os.environ.get("CI")
