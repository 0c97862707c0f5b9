"""Helpers shared by the tests (fixtures live in conftest.py)."""

import os
import socket
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.test import Client

PASSWORD = "correct-Horse-battery-9"


def host_of(tenant) -> str:
    return f"{tenant.schema_name}.{settings.PORTAL_DOMAIN}"


def login(client: Client, user) -> Client:
    """Log in through the real login view (axes and all), as a browser would."""
    response = client.post("/login/", {"username": user.email, "password": PASSWORD})
    assert response.status_code == 302, response.content[:500]
    return client


def database_url_for_tests() -> str:
    """DATABASE_URL pointing at the test database, for processes the tests start (web, worker)."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path="/" + settings.DATABASES["default"]["NAME"]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
