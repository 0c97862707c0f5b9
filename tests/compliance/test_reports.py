"""Compliance reports: every figure equals the ground truth of a known workload, tampering shows, and only
owners and compliance officers (with their second factor) or keys with `reports:read` read them, in their
own tenant only."""

import csv
import hashlib
import io
import json
from datetime import timedelta

import pytest
from auditlog.models import LogEntry
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_tenants.utils import tenant_context

from apps.compliance import reports
from apps.compliance.models import AccessEvent, ComplianceReport, ComplianceReportInputHashes
from apps.compliance.records import record_append
from apps.compliance.reports import report_build
from apps.compliance.services import report_generate, report_request
from apps.inference.hashing import canonical_json, sha256_hex
from apps.registry.models import AliasChange, RegisteredModel
from tests.helpers import bearer, login, otp_login, record_fields
from tests.helpers import db_tamper as _tamper

# (user, key, model, version, status, error_code, input hash) of each request in the period, minutes apart.
WORKLOAD = [
    ("alice", "pk_alice1", "iris", 1, "ok", "", "1" * 64),
    ("alice", "pk_alice1", "iris", 1, "ok", "", "2" * 64),
    ("alice", "pk_alice1", "iris", 2, "refused", "schema_mismatch", "3" * 64),
    ("dave", "pk_dave01", "iris", 2, "ok", "", "1" * 64),
    ("dave", "pk_dave01", "iris", 2, "failed", "upstream_error", "4" * 64),
    ("dave", "pk_dave01", "wine", 1, "timeout", "", "5" * 64),
    ("dave", "pk_dave02", "wine", 1, "ok", "", "6" * 64),
]
INPUT_HASHES = sorted({row[6] for row in WORKLOAD})


@pytest.fixture
def workload(in_tenant_a, cast):
    """The workload, one record before the period and one after it, alias changes and access events."""
    base = timezone.now() - timedelta(hours=2)
    users = {"alice": cast.alice, "dave": cast.dave}
    record_append(**record_fields(received_at=base - timedelta(days=3), key_prefix="pk_alice1", user_id=cast.alice.pk))
    records = [
        record_append(
            **record_fields(
                user_id=users[user].pk,
                key_prefix=key,
                model_name=model,
                model_version=version,
                status=status,
                error_code=error,
                input_sha256=digest,
                received_at=base + timedelta(minutes=index),
            )
        )
        for index, (user, key, model, version, status, error, digest) in enumerate(WORKLOAD)
    ]
    record_append(**record_fields(received_at=base + timedelta(days=3), key_prefix="pk_dave01", user_id=cast.dave.pk))
    iris = RegisteredModel.objects.create(name="iris", mlflow_name="alpha__iris_reports")
    AliasChange.objects.create(model=iris, alias="champion", kind="promote", to_version=2, actor=cast.alice)
    AliasChange.objects.create(
        model=iris, alias="champion", kind="rollback", from_version=2, to_version=1, actor=cast.dave, reason="bad"
    )
    for reason in ("unknown_key", "unknown_key", "rate_limited", "login"):
        AccessEvent.objects.create(occurred_at=base + timedelta(minutes=1), reason=reason, key_prefix="pk_x")
    AccessEvent.objects.create(occurred_at=base - timedelta(days=3), reason="unknown_key")
    return {"start": base - timedelta(minutes=1), "end": base + timedelta(hours=3), "base": base, "records": records}


def _by(rows: list[dict], *fields: str) -> dict:
    return {tuple(row[field] for field in fields): row for row in rows}


def test_report_figures_equal_the_ground_truth_of_the_workload(workload, cast):
    base = workload["base"]
    built = report_build(start=workload["start"], end=workload["end"])
    content = built.content

    assert content["totals"] == {"requests": 7, "ok": 4, "refused": 1}
    by_user = _by(content["usage"]["by_user"], "user_email")
    assert {email: (r["requests"], r["ok"], r["refused"]) for (email,), r in by_user.items()} == {
        cast.alice.email: (3, 2, 1),
        cast.dave.email: (4, 2, 0),
    }
    assert by_user[(cast.alice.email,)]["first_use"] == base.isoformat()
    assert by_user[(cast.alice.email,)]["last_use"] == (base + timedelta(minutes=2)).isoformat()
    assert by_user[(cast.dave.email,)]["first_use"] == (base + timedelta(minutes=3)).isoformat()
    assert by_user[(cast.dave.email,)]["last_use"] == (base + timedelta(minutes=6)).isoformat()
    by_key = _by(content["usage"]["by_key"], "key_prefix")
    assert {key: r["requests"] for (key,), r in by_key.items()} == {"pk_alice1": 3, "pk_dave01": 3, "pk_dave02": 1}
    pairs = _by(content["usage"]["by_user_and_key"], "user_email", "key_prefix")
    assert {pair: r["requests"] for pair, r in pairs.items()} == {
        (cast.alice.email, "pk_alice1"): 3,
        (cast.dave.email, "pk_dave01"): 3,
        (cast.dave.email, "pk_dave02"): 1,
    }

    versions = _by(content["versions"]["versions"], "model_name", "model_version")
    assert {v: (r["requests"], r["ok"]) for v, r in versions.items()} == {
        ("iris", 1): (2, 2),
        ("iris", 2): (3, 1),
        ("wine", 1): (2, 1),
    }
    assert versions[("iris", 2)]["first_served"] == (base + timedelta(minutes=2)).isoformat()
    assert versions[("iris", 2)]["last_served"] == (base + timedelta(minutes=4)).isoformat()
    changes = content["versions"]["alias_changes"]
    assert [(c["kind"], c["from_version"], c["to_version"], c["actor_email"], c["reason"]) for c in changes] == [
        ("promote", None, 2, cast.alice.email, ""),
        ("rollback", 2, 1, cast.dave.email, "bad"),
    ]

    data = content["data"]
    assert "input_hashes" not in data  # listed apart, vouched for by count and digest
    assert built.input_hashes == canonical_json(INPUT_HASHES)
    assert data["input_hash_count"] == 6
    assert data["input_hashes_sha256"] == sha256_hex(INPUT_HASHES)
    assert data["payload_retention"] == "not retained"
    assert {
        (r["model_name"], r["model_version"]): (r["requests"], r["distinct_inputs"]) for r in data["by_version"]
    } == {
        ("iris", 1): (2, 2),
        ("iris", 2): (3, 3),
        ("wine", 1): (2, 2),
    }

    failures = content["failures"]
    assert [(f["model_name"], f["status"], f["error_code"], f["count"]) for f in failures["failures"]] == [
        ("iris", "failed", "upstream_error", 1),
        ("wine", "timeout", "", 1),
    ]
    assert {d["reason"]: d["count"] for d in failures["access_denials"]} == {"rate_limited": 1, "unknown_key": 2}
    assert failures["access_denial_count"] == 3

    assert content["chain"]["ok"] is True
    assert content["chain"]["checked"] == 9
    assert content["chain"]["head_sequence"] == 9
    json.dumps(content)  # plain JSON data, nothing that needs a custom encoder


def test_filters_narrow_the_report_to_one_model_or_one_key(workload):
    by_model = report_build(start=workload["start"], end=workload["end"], model_name="wine").content
    by_key = report_build(start=workload["start"], end=workload["end"], key_prefix="pk_alice1")

    assert by_model["totals"]["requests"] == 2
    assert by_model["versions"]["alias_changes"] == []  # the changes were to iris
    assert by_key.content["totals"]["requests"] == 3
    assert json.loads(by_key.input_hashes) == ["1" * 64, "2" * 64, "3" * 64]
    assert by_key.content["data"]["input_hash_count"] == 3
    assert by_key.content["failures"]["access_denial_count"] == 0  # the denials were for another key


def test_a_tampered_record_makes_the_report_say_the_chain_is_broken(workload):
    tampered = workload["records"][3]
    _tamper("UPDATE compliance_inferencerecord SET model_version = 9 WHERE id = %s", [tampered.pk])

    chain = report_build(start=workload["start"], end=workload["end"]).content["chain"]

    assert chain["ok"] is False
    assert chain["first_broken_sequence"] == tampered.sequence
    assert tampered.request_id in chain["problem"]


def test_a_generated_report_stores_its_content_with_a_hash_and_its_request_is_audited(
    workload, cast, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        report = report_request(actor=cast.olivia, start=workload["start"], end=workload["end"], model_name="iris")
    assert len(callbacks) == 1  # the task is sent once the row is committed

    report = report_generate(report_id=report.pk)

    assert report.status == ComplianceReport.Status.DONE
    assert report.progress == 100
    stored = ComplianceReport.objects.get(pk=report.pk)
    assert stored.content_sha256 == sha256_hex(stored.content)
    assert stored.content["report"]["requested_by"] == cast.olivia.email
    assert stored.content["totals"]["requests"] == 5
    iris_hashes = sorted({row[6] for row in WORKLOAD if row[2] == "iris"})
    kept = bytes(ComplianceReportInputHashes.objects.get(report=stored).hashes)
    assert json.loads(kept) == iris_hashes
    assert hashlib.sha256(kept).hexdigest() == stored.content["data"]["input_hashes_sha256"] == sha256_hex(iris_hashes)
    assert stored.content["data"]["input_hash_count"] == 4
    entry = LogEntry.objects.get_for_object(stored).get(action=LogEntry.Action.CREATE)
    assert entry.actor_id == cast.olivia.pk
    assert "period_start" in entry.changes_dict
    assert entry.changes_dict["model_name"][1] == "iris"
    assert report_generate(report_id=report.pk).content_sha256 == stored.content_sha256  # idempotent


@pytest.mark.parametrize(
    ("start_offset", "end_offset", "code"),
    [(timedelta(0), timedelta(0), "invalid_period"), (timedelta(days=-401), timedelta(0), "period_too_long")],
)
def test_an_invalid_period_is_refused_and_creates_nothing(in_tenant_a, cast, start_offset, end_offset, code):
    now = timezone.now()
    with pytest.raises(ValidationError) as error:
        report_request(actor=cast.olivia, start=now + start_offset, end=now + end_offset)
    assert error.value.code == code
    assert not ComplianceReport.objects.exists()


def _done_report(cast, workload) -> ComplianceReport:
    report = report_request(actor=cast.olivia, start=workload["start"], end=workload["end"])
    return report_generate(report_id=report.pk)


def test_an_officer_with_a_second_factor_reads_and_downloads_the_report(workload, cast, client_a):
    report = _done_report(cast, workload)
    otp_login(client_a, cast.olivia)

    assert client_a.get("/reports/").status_code == 200
    page = client_a.get(f"/reports/{report.pk}/")
    assert page.status_code == 200
    assert report.content_sha256 in page.content.decode()

    response = client_a.get(f"/reports/{report.pk}.csv")
    assert response["X-Content-SHA256"] == report.content_sha256
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert ["content sha256", report.content_sha256] in rows
    assert ["input hashes sha256", sha256_hex(INPUT_HASHES)] in rows
    assert _csv_hashes(rows) == INPUT_HASHES

    response = client_a.get(f"/reports/{report.pk}.json")
    body = b"".join(response.streaming_content)
    envelope = json.loads(body)
    assert response["X-Content-SHA256"] == envelope["sha256"] == sha256_hex(envelope["content"])
    assert envelope["input_hashes"] == INPUT_HASHES
    assert sha256_hex(envelope["input_hashes"]) == envelope["content"]["data"]["input_hashes_sha256"]
    assert b'"input_hashes": ' + canonical_json(INPUT_HASHES) + b",\n" in body  # the bytes hashed, as they are

    response = client_a.get(f"/reports/{report.pk}.html")
    assert response["X-Content-SHA256"] == report.content_sha256
    assert report.content_sha256 in response.content.decode()
    assert all(digest in response.content.decode() for digest in INPUT_HASHES)


def _csv_hashes(rows: list[list[str]]) -> list[str]:
    """The input hashes section of a CSV download: the last one, every row after its header."""
    return [row[0] for row in rows[rows.index(["section", "input hashes"]) + 2 :]]


def test_downloads_read_the_stored_list_slice_by_slice(workload, cast, client_a, monkeypatch):
    monkeypatch.setattr(reports, "SLICE_BYTES", 50)  # 6 hashes, 9 slices cut anywhere, separators included
    report = _done_report(cast, workload)
    otp_login(client_a, cast.olivia)

    text = b"".join(client_a.get(f"/reports/{report.pk}.csv").streaming_content).decode()
    body = b"".join(client_a.get(f"/reports/{report.pk}.json").streaming_content)

    assert _csv_hashes(list(csv.reader(io.StringIO(text)))) == INPUT_HASHES
    assert json.loads(body)["input_hashes"] == INPUT_HASHES
    assert list(reports.input_hashes_json(report)) == [
        canonical_json(INPUT_HASHES)[start : start + 50] for start in range(0, 6 * 67 + 1, 50)
    ]


def test_under_asgi_the_json_download_is_pulled_slice_by_slice(workload, cast, monkeypatch):
    from asgiref.sync import async_to_sync
    from django.test import AsyncRequestFactory

    from apps.compliance.report_pages import report_download_response

    monkeypatch.setattr(reports, "SLICE_BYTES", 100)
    report = _done_report(cast, workload)
    response = report_download_response(AsyncRequestFactory().get("/"), report=report, fmt="json")

    async def received() -> list[bytes]:
        return [chunk async for chunk in response.streaming_content]

    chunks = async_to_sync(received)()
    assert response.is_async
    assert len(chunks) == 2 + 5  # the envelope around the list, and the list in five slices
    assert json.loads(b"".join(chunks))["input_hashes"] == INPUT_HASHES


def test_a_changed_stored_list_no_longer_matches_the_digest_the_report_vouches_for(workload, cast, client_a):
    report = _done_report(cast, workload)
    ComplianceReportInputHashes.objects.filter(report=report).update(hashes=canonical_json(INPUT_HASHES[1:]))
    otp_login(client_a, cast.olivia)

    envelope = json.loads(b"".join(client_a.get(f"/reports/{report.pk}.json").streaming_content))

    assert sha256_hex(envelope["content"]) == envelope["sha256"] == report.content_sha256  # the content is intact
    assert sha256_hex(envelope["input_hashes"]) != envelope["content"]["data"]["input_hashes_sha256"]
    # Making the content vouch for the forged list changes the content's own hash, which the audit log keeps.
    forged = {**report.content, "data": {**report.content["data"], "input_hashes_sha256": sha256_hex(INPUT_HASHES[1:])}}
    assert sha256_hex(forged) != report.content_sha256
    logged = LogEntry.objects.get_for_object(report).filter(action=LogEntry.Action.UPDATE).latest("timestamp")
    assert logged.changes_dict["content_sha256"][1] == report.content_sha256


def test_input_hashes_that_are_not_hex_are_listed_as_canonical_json(in_tenant_a, cast, client_a):
    odd = ['quote " and, comma', "back\\slash", "new\nline", "caf\u00e9", "1" * 64]
    start = timezone.now() - timedelta(hours=1)
    for index, digest in enumerate(odd):
        record_append(**record_fields(input_sha256=digest, received_at=start + timedelta(minutes=index)))

    built = report_build(start=start, end=timezone.now())

    assert built.input_hashes == canonical_json(sorted(odd))
    assert built.content["data"]["input_hashes_sha256"] == sha256_hex(sorted(odd))
    report = report_generate(report_id=report_request(actor=cast.olivia, start=start, end=timezone.now()).pk)
    otp_login(client_a, cast.olivia)
    text = b"".join(client_a.get(f"/reports/{report.pk}.csv").streaming_content).decode()
    assert sorted(_csv_hashes(list(csv.reader(io.StringIO(text))))) == sorted(odd)


def test_a_report_of_format_1_is_still_downloaded_with_the_hashes_its_content_holds(workload, cast, client_a):
    report = _done_report(cast, workload)
    data = {name: value for name, value in report.content["data"].items() if name != "input_hashes_sha256"}
    content = {**report.content, "format": 1, "data": {**data, "input_hashes": INPUT_HASHES}}
    ComplianceReportInputHashes.objects.filter(report=report).delete()
    ComplianceReport.objects.filter(pk=report.pk).update(content=content, content_sha256=sha256_hex(content))
    otp_login(client_a, cast.olivia)

    text = b"".join(client_a.get(f"/reports/{report.pk}.csv").streaming_content).decode()
    envelope = json.loads(b"".join(client_a.get(f"/reports/{report.pk}.json").streaming_content))

    assert _csv_hashes(list(csv.reader(io.StringIO(text)))) == INPUT_HASHES
    assert envelope["input_hashes"] == envelope["content"]["data"]["input_hashes"] == INPUT_HASHES
    assert "input_hashes_sha256_of" not in envelope
    assert sha256_hex(envelope["content"]) == envelope["sha256"]


def test_a_report_with_more_hashes_than_a_printout_holds_links_to_the_downloads(workload, cast, client_a, monkeypatch):
    monkeypatch.setattr(reports, "PRINTED_HASHES_MAX", 5)
    report = _done_report(cast, workload)
    otp_login(client_a, cast.olivia)

    page = client_a.get(f"/reports/{report.pk}.html").content.decode()

    assert "1" * 64 not in page
    assert sha256_hex(INPUT_HASHES) in page
    assert f'href="/reports/{report.pk}.csv"' in page


def test_a_report_request_from_the_portal_is_queued_for_the_officer(in_tenant_a, cast, client_a):
    otp_login(client_a, cast.olivia)
    today = timezone.now().date()

    response = client_a.post("/reports/", {"start": today - timedelta(days=7), "end": today})

    report = ComplianceReport.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/reports/{report.pk}/"
    assert report.requested_by == cast.olivia
    assert report.status == ComplianceReport.Status.QUEUED


def test_csv_cells_that_a_spreadsheet_would_run_are_defused(workload, cast, client_a):
    iris = RegisteredModel.objects.get(name="iris")
    AliasChange.objects.create(model=iris, alias="champion", kind="set", to_version=1, reason="=HYPERLINK(1)")
    report = _done_report(cast, workload)
    otp_login(client_a, cast.olivia)

    text = b"".join(client_a.get(f"/reports/{report.pk}.csv").streaming_content).decode()

    assert "'=HYPERLINK(1)" in text


def test_developers_and_viewers_get_403_and_an_officer_without_second_factor_is_sent_to_verify(
    workload, cast, client_a
):
    report = _done_report(cast, workload)
    for member in (cast.dave, cast.victor):
        client = login(type(client_a)(HTTP_HOST=client_a.defaults["HTTP_HOST"]), member)
        assert client.get("/reports/").status_code == 403
        assert client.get(f"/reports/{report.pk}.csv").status_code == 403
        assert client.get(f"/api/v1/reports/{report.pk}").status_code == 403
    assert client.post("/reports/", {"start": "2025-01-01", "end": "2025-01-02"}).status_code == 403
    assert ComplianceReport.objects.count() == 1

    login(client_a, cast.olivia)
    response = client_a.get(f"/reports/{report.pk}/")
    assert response.status_code == 302
    assert "/account/two-factor/" in response["Location"]
    body = client_a.get("/api/v1/reports").json()
    assert body["error"]["code"] == "second_factor_required"


def test_a_key_with_reports_read_requests_and_reads_reports(workload, cast, client_a, make_key):
    _, secret = make_key(cast.alice, scopes=("reports:read",))

    response = client_a.post(
        "/api/v1/reports",
        {"start": workload["start"].isoformat(), "end": workload["end"].isoformat(), "key_prefix": "pk_dave01"},
        content_type="application/json",
        **bearer(secret),
    )

    assert response.status_code == 202
    report = ComplianceReport.objects.get(pk=response.json()["id"])
    assert response["Location"] == f"/api/v1/reports/{report.pk}"
    assert report.requested_by_id == cast.alice.pk
    report_generate(report_id=report.pk)
    detail = client_a.get(f"/api/v1/reports/{report.pk}", **bearer(secret)).json()
    assert detail["status"] == "done"
    assert detail["content"]["totals"]["requests"] == 3
    assert detail["content_sha256"] == sha256_hex(detail["content"])
    listing = client_a.get("/api/v1/reports", **bearer(secret)).json()
    assert [row["id"] for row in listing["results"]] == [report.pk]
    download = client_a.get(f"/api/v1/reports/{report.pk}/download?format=csv", **bearer(secret))
    assert download.status_code == 200
    assert download["X-Content-SHA256"] == detail["content_sha256"]
    bad = client_a.get(f"/api/v1/reports/{report.pk}/download?format=pdf", **bearer(secret))
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_format"


def test_a_key_without_reports_read_is_refused_and_creates_nothing(workload, cast, client_a, make_key):
    _, secret = make_key(cast.alice, scopes=("models:read",))

    response = client_a.post(
        "/api/v1/reports",
        {"start": workload["start"].isoformat(), "end": workload["end"].isoformat()},
        content_type="application/json",
        **bearer(secret),
    )

    assert response.status_code == 403
    assert set(response.json()["error"]) == {"code", "message", "request_id"}
    assert not ComplianceReport.objects.exists()


def test_an_invalid_period_through_the_api_is_a_422(in_tenant_a, cast, client_a, make_key):
    _, secret = make_key(cast.alice, scopes=("reports:read",))
    now = timezone.now().isoformat()

    response = client_a.post(
        "/api/v1/reports", {"start": now, "end": now}, content_type="application/json", **bearer(secret)
    )

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_period"


def test_another_tenant_never_sees_the_report(workload, cast, client_b, make_key):
    report = _done_report(cast, workload)
    _, secret = make_key(tenant=cast.tenant_b, scopes=("reports:read",))

    assert client_b.get(f"/api/v1/reports/{report.pk}", **bearer(secret)).status_code == 404
    assert client_b.get(f"/api/v1/reports/{report.pk}/download?format=json", **bearer(secret)).status_code == 404
    assert client_b.get("/api/v1/reports", **bearer(secret)).json()["results"] == []
    otp_login(client_b, cast.charlie)
    assert client_b.get(f"/reports/{report.pk}/").status_code == 404
    assert client_b.get(f"/reports/{report.pk}.csv").status_code == 404
    with tenant_context(cast.tenant_b):
        assert not ComplianceReport.objects.exists()


def test_a_developers_key_with_reports_read_is_still_refused(in_tenant_a, cast, client_a, make_key):
    _, secret = make_key(cast.dave, scopes=("reports:read",))

    response = client_a.get("/api/v1/reports", **bearer(secret))

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_a_report_that_cannot_be_stored_ends_failed_not_running(workload, cast, monkeypatch):
    from django.db import DatabaseError

    from apps.compliance import services

    def refuse(**kwargs):
        raise DatabaseError("value too large")

    monkeypatch.setattr(services, "_report_input_hashes_store", refuse)
    report = report_request(actor=cast.olivia, start=workload["start"], end=workload["end"])

    report = report_generate(report_id=report.pk)

    assert report.status == ComplianceReport.Status.FAILED
    assert "storing the report failed" in report.error
    assert not ComplianceReportInputHashes.objects.filter(report_id=report.pk).exists()
