"""A raw key never leaks: after exercising every key path, neither the database, Redis, the logs,
the audit log, the admin nor any error message contains a secret."""

import logging

import pytest
from django.db import connection
from django.test import Client

from apps.apikeys.models import ApiKey
from apps.compliance.services import access_events_flush
from config.redis import get_redis
from tests.helpers import host_of, otp_login


def _database_text() -> str:
    """Every row of every table in every schema, as text: a dump the test can search."""
    chunks = []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        for schema, table in cursor.fetchall():
            cursor.execute(f'SELECT t::text FROM "{schema}"."{table}" AS t')  # noqa: S608 (names from the catalog)
            chunks.extend(row[0] for row in cursor.fetchall())
    return "\n".join(chunks)


def _redis_text() -> str:
    client, chunks = get_redis(), []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            chunks.append(repr(client.get(key)))
        elif kind == "hash":
            chunks.append(repr(client.hgetall(key)))
        elif kind == "list":
            chunks.append(repr(client.lrange(key, 0, -1)))
        chunks.append(repr(key))
    return "\n".join(chunks)


def test_no_raw_key_anywhere(cast, in_tenant_a, caplog):
    caplog.set_level(logging.DEBUG)
    owner = Client(HTTP_HOST=host_of(cast.tenant_a))
    owner.force_login(cast.alice)
    created = owner.post(
        "/api/v1/keys", {"name": "leak", "scopes": ["keys:manage", "inference"]}, content_type="application/json"
    ).json()
    first = created["secret"]
    secrets = [first]
    client = Client(HTTP_HOST=host_of(cast.tenant_a))
    auth = {"HTTP_AUTHORIZATION": f"Bearer {first}"}
    # every key path: success, listing, update, a wrong secret, errors, rotation, revocation, the admin
    assert client.get("/api/v1/me", **auth).status_code == 200
    assert client.get("/api/v1/keys", **auth).status_code == 200
    assert (
        client.patch(
            f"/api/v1/keys/{created['id']}", {"name": "renamed"}, content_type="application/json", **auth
        ).status_code
        == 200
    )
    assert client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {first[:-1]}x").status_code == 401
    assert (
        client.post(
            "/api/v1/keys", {"name": "x", "scopes": ["models:write"]}, content_type="application/json", **auth
        ).status_code
        == 403
    )
    assert client.post("/api/v1/keys", data="{broken", content_type="application/json", **auth).status_code == 400
    rotated = client.post(
        f"/api/v1/keys/{created['id']}/rotate", {"grace_seconds": 60}, content_type="application/json", **auth
    ).json()
    secrets.append(rotated["secret"])
    assert client.get("/api/v1/me", HTTP_X_API_KEY=rotated["secret"]).status_code == 200
    assert client.post(f"/api/v1/keys/{created['id']}/revoke", HTTP_X_API_KEY=rotated["secret"]).status_code == 200
    refused = client.get("/api/v1/me", HTTP_X_API_KEY=rotated["secret"])
    assert refused.status_code == 401
    officer = Client(HTTP_HOST=host_of(cast.tenant_a))
    otp_login(officer, cast.olivia)
    pages = [
        officer.get("/admin/apikeys/apikey/").content.decode(),
        officer.get(f"/admin/apikeys/apikey/{created['id']}/change/").content.decode(),
        officer.get("/admin/auditlog/logentry/").content.decode(),
        refused.content.decode(),
    ]
    access_events_flush(schema_name="alpha")

    haystacks = {
        "database": _database_text(),
        "redis": _redis_text(),
        "logs": caplog.text + "\n".join(str(record.__dict__) for record in caplog.records),
        "pages": "\n".join(pages),
    }
    assert ApiKey.objects.get(pk=created["id"]).prefix in haystacks["database"]  # the dump is real
    for secret in secrets:
        secret_part = secret.split("_", 2)[2]  # after `aip_<prefix>_`; the secret itself may contain "_"
        for where, text in haystacks.items():
            assert secret not in text, f"raw key found in {where}"
            assert secret_part not in text, f"secret part found in {where}"


@pytest.mark.parametrize("header", ["HTTP_AUTHORIZATION", "HTTP_X_API_KEY"])
def test_error_messages_never_echo_the_key(client_a, header):
    bogus = "aip_0123456789ab_" + "Z" * 43
    value = f"Bearer {bogus}" if header == "HTTP_AUTHORIZATION" else bogus
    response = client_a.get("/api/v1/me", **{header: value})
    assert bogus not in response.content.decode()
    assert "Z" * 43 not in response.content.decode()
