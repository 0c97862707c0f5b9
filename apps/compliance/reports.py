"""What a compliance report says: who used which model, what answered, what was processed, what failed.

Every figure comes from an aggregate query (GROUP BY in PostgreSQL), so a period of a million records costs a
handful of queries, not a million rows in Python. The content is plain JSON data (strings, numbers, lists), so
its canonical form, and hence its SHA-256, is the same wherever it is recomputed. The list of distinct input
hashes (67 MB for a million) is not in it: PostgreSQL writes it as canonical JSON in one string, it is stored
apart (`ComplianceReportInputHashes`), and the content keeps its count and SHA-256, so the content's hash still
covers it.
"""

import csv
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Max, Min
from django.utils import timezone

from apps.accounts.models import User
from apps.compliance.exports import _Echo, csv_safe
from apps.compliance.models import (
    AccessEvent,
    ChainHead,
    ComplianceReport,
    ComplianceReportInputHashes,
    InferenceRecord,
    RetainedPayload,
    RetentionPurge,
)
from apps.compliance.records import chain_verify
from apps.inference.hashing import canonical_json
from apps.registry.models import AliasChange
from apps.tenants.models import Tenant

# 2: the input hashes left the content for `ComplianceReportInputHashes`; `data` has their count and SHA-256.
REPORT_FORMAT = 2

# Sign-ins worth auditing are not denials: the report's section (d) lists only refused access.
NOT_DENIALS = (
    AccessEvent.Reason.LOGIN,
    AccessEvent.Reason.ADMIN_LOGIN,
    AccessEvent.Reason.TOTP_ENROLLED,
    AccessEvent.Reason.RECOVERY_CODE_USED,
)
PAYLOAD_NOT_RETAINED_NOTE = (
    "Inputs and outputs are not stored: the record keeps only their SHA-256 hashes and request metadata."
)
PAYLOAD_RETAINED_NOTE = (
    "Inputs and outputs are kept encrypted for {days} days after each request (keys outside the database), then "
    "purged; compliance officers open them from the record, each opening an access event. A kept payload's "
    "SHA-256 equals its record's."
)

Progress = Callable[[int], None]


@dataclass(frozen=True)
class BuiltReport:
    """What `report_build` produces: the content, and the input hashes it counts and hashes but does not hold.

    `input_hashes` is the canonical JSON (UTF-8) of the sorted list of distinct input hashes, the very bytes
    whose SHA-256 is `content["data"]["input_hashes_sha256"]`.
    """

    content: dict[str, Any]
    input_hashes: bytes


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


def _emails(user_ids: set[int]) -> dict[int, str]:
    """One query for every user the report names: records keep plain user ids, not foreign keys."""
    return dict(User.objects.filter(pk__in=user_ids).values_list("pk", "email"))


# One pass over the period's records yields every grouping the report needs: the records are counted once by all
# six columns together (a few thousand groups for a million records), and the groupings are sums of those, where a
# query per grouping would read a million rows six times and GROUPING SETS straight on the records would hash each
# record once per grouping. Rows come back ordered by grouping and then by its own columns, so each section keeps
# the order a query of its own would give it.
_GROUPINGS: dict[str, tuple[str, ...]] = {
    "totals": (),
    "by_user": ("user_id",),
    "by_key": ("key_prefix",),
    "by_user_and_key": ("user_id", "key_prefix"),
    "versions": ("model_name", "model_version"),
    "failures": ("model_name", "model_version", "status", "error_code"),
}
_GROUP_COLUMNS = ("user_id", "key_prefix", "model_name", "model_version", "status", "error_code")


def _where(*, start: datetime, end: datetime, model_name: str | None, key_prefix: str | None) -> tuple[str, list]:
    sql, params = "received_at >= %s AND received_at < %s", [start, end]
    if model_name:
        sql, params = f"{sql} AND model_name = %s", [*params, model_name]
    if key_prefix:
        sql, params = f"{sql} AND key_prefix = %s", [*params, key_prefix]
    return sql, params


def _grouping_mask(columns: tuple[str, ...]) -> int:
    """The value of SQL `GROUPING(...)` over `_GROUP_COLUMNS` for rows of this grouping (a bit per column left out)."""
    width = len(_GROUP_COLUMNS)
    return sum(1 << (width - 1 - index) for index, name in enumerate(_GROUP_COLUMNS) if name not in columns)


def _total(column: str) -> str:
    # A sum of counts, as an integer; 0 for the grand total of an empty period, as count(*) would give.
    return f"coalesce(sum({column}), 0)::bigint"


def _groupings(**filters) -> dict[str, list[dict[str, Any]]]:
    """Every grouping of `_GROUPINGS` over the filtered records, in one query."""
    where, params = _where(**filters)
    columns = ", ".join(_GROUP_COLUMNS)
    sets = ", ".join(f"({', '.join(by)})" for by in _GROUPINGS.values())
    # Only constant identifiers are formatted in; every value is a query parameter.
    sql = (
        f"WITH counted AS (SELECT {columns}, count(*) AS requests,"  # noqa: S608
        " count(*) FILTER (WHERE status = %s) AS ok, count(*) FILTER (WHERE status = %s) AS refused,"
        " min(received_at) AS first_at, max(received_at) AS last_at"
        f" FROM {InferenceRecord._meta.db_table} WHERE {where} GROUP BY {columns})"
        f" SELECT GROUPING({columns}), {columns}, {_total('requests')}, {_total('ok')}, {_total('refused')},"
        f" min(first_at), max(last_at) FROM counted GROUP BY GROUPING SETS ({sets}) ORDER BY 1, {columns}"
    )
    names = {_grouping_mask(by): name for name, by in _GROUPINGS.items()}
    result: dict[str, list[dict[str, Any]]] = {name: [] for name in _GROUPINGS}
    with transaction.atomic(), connection.cursor() as cursor:
        # PostgreSQL expects as many groups as a sixth of the records, more than the default 4 MB can hash, and
        # would sort a million rows instead; there are a few thousand, which hash in a fraction of the time.
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(sql, [InferenceRecord.Status.OK, InferenceRecord.Status.REFUSED, *params])
        for mask, *values, requests, ok, refused, first, last in cursor.fetchall():
            name = names[mask]
            row = {
                column: value
                for column, value in zip(_GROUP_COLUMNS, values, strict=True)
                if column in _GROUPINGS[name]
            }
            result[name].append(
                {**row, "requests": requests, "ok": ok, "refused": refused, "first": first, "last": last}
            )
    return result


def _usage(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            **{k: v for k, v in row.items() if k not in ("first", "last")},
            "first_use": _iso(row["first"]),
            "last_use": _iso(row["last"]),
        }
        for row in rows
    ]


def _section_usage(groups: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    by_user, by_key, by_user_and_key = (_usage(groups[name]) for name in ("by_user", "by_key", "by_user_and_key"))
    emails = _emails({row["user_id"] for row in by_user if row["user_id"] is not None})
    for row in (*by_user, *by_user_and_key):
        row["user_email"] = emails.get(row["user_id"])
    return {"by_user": by_user, "by_key": by_key, "by_user_and_key": by_user_and_key}


def _alias_changes(*, start: datetime, end: datetime, model_name: str | None) -> list[dict[str, Any]]:
    changes = AliasChange.objects.filter(changed_at__gte=start, changed_at__lt=end).select_related("model", "actor")
    if model_name:
        changes = changes.filter(model__name=model_name)
    return [
        {
            "model_name": change.model.name,
            "alias": change.alias,
            "kind": change.kind,
            "from_version": change.from_version,
            "to_version": change.to_version,
            "actor_email": change.actor.email if change.actor else None,
            "reason": change.reason,
            "changed_at": _iso(change.changed_at),
        }
        for change in changes.order_by("changed_at", "pk")
    ]


def _section_versions(groups: dict[str, list[dict[str, Any]]], **period) -> dict[str, Any]:
    versions = [
        {
            "model_name": row["model_name"],
            "model_version": row["model_version"],
            "requests": row["requests"],
            "ok": row["ok"],
            "first_served": _iso(row["first"]),
            "last_served": _iso(row["last"]),
        }
        for row in groups["versions"]
    ]
    return {"versions": versions, "alias_changes": _alias_changes(**period)}


# What canonical JSON of a list of lowercase hex strings is made of: when the list PostgreSQL wrote holds nothing
# else, no character needed escaping and its bytes are exactly `canonical_json` of the list.
_HEX_LIST_BYTES = b'0123456789abcdef[",]'
# The list as one string in its canonical JSON form, written by PostgreSQL from the sorted distinct hashes.
_LIST_SQL = """coalesce('["' || string_agg(digest, '","' ORDER BY digest) || '"]', '[]')"""


def _section_data(groups: dict[str, list[dict[str, Any]]], tenant: Tenant, **filters) -> tuple[dict[str, Any], bytes]:
    """Distinct inputs per version, and the sorted distinct input hashes as canonical JSON, from one sort.

    The period's distinct (hash, model, version) triples are sorted by hash once; the per-version counts and the
    list both read them. The hashes are lowercase hex, which sorts the same under every
    collation, so the byte order of `COLLATE "C"` gives the same list as the database's collation at a fraction
    of the cost.
    """
    where, params = _where(**filters)
    table = InferenceRecord._meta.db_table  # constant identifiers are formatted in, values are parameters
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH inputs AS MATERIALIZED (SELECT DISTINCT"  # noqa: S608
            ' input_sha256 COLLATE "C" AS digest, model_name COLLATE "C" AS model_name, model_version'
            f" FROM {table} WHERE {where})"
            " SELECT model_name, model_version, count(*), NULL FROM inputs GROUP BY model_name, model_version"
            f" UNION ALL SELECT NULL, NULL, count(*), {_LIST_SQL}"
            " FROM (SELECT DISTINCT ON (digest) digest FROM inputs ORDER BY digest) AS digests",
            params,
        )
        rows = cursor.fetchall()
        input_hashes = next(joined for name, _, _, joined in rows if name is None).encode()
        if input_hashes.translate(None, _HEX_LIST_BYTES):
            # A hash that is not lowercase hex (`record_append` never writes one) may need escaping.
            cursor.execute(f'SELECT DISTINCT input_sha256 COLLATE "C" FROM {table} WHERE {where} ORDER BY 1', params)  # noqa: S608
            input_hashes = canonical_json([digest for (digest,) in cursor.fetchall()])
    counts = {(name, version): count for name, version, count, _ in rows}
    # A record received between this query and the groupings' (a period that includes now) is in one, not both.
    by_version = [
        {
            "model_name": row["model_name"],
            "model_version": row["model_version"],
            "requests": row["requests"],
            "distinct_inputs": counts.get((row["model_name"], row["model_version"]), 0),
        }
        for row in groups["versions"]
    ]
    data = {
        "by_version": by_version,
        "input_hash_count": counts[(None, None)],
        "input_hashes_sha256": hashlib.sha256(input_hashes).hexdigest(),
        **_payload_status(tenant, **filters),
    }
    return data, input_hashes


def _payload_status(tenant: Tenant, **filters) -> dict[str, Any]:
    """The tenant's payload retention at report time, and how many of the period's requests still have one kept."""
    kept = 0
    if tenant.payload_retention or RetainedPayload.objects.exists():
        where, params = _where(**filters)
        records, payloads = InferenceRecord._meta.db_table, RetainedPayload._meta.db_table  # constant identifiers
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT count(*) FROM {payloads} JOIN {records} USING (request_id) WHERE {where}",  # noqa: S608
                params,
            )
            kept = cursor.fetchone()[0]
    if tenant.payload_retention:
        status = f"retained encrypted for {tenant.payload_retention_days} days"
        note = PAYLOAD_RETAINED_NOTE.format(days=tenant.payload_retention_days)
    else:
        status, note = "not retained", PAYLOAD_NOT_RETAINED_NOTE
    return {"payload_retention": status, "payload_retention_note": note, "payloads_kept": kept}


def _section_retention(tenant: Tenant, *, start: datetime) -> dict[str, Any]:
    """How long records are kept, and whether purges under that policy already took records of this period."""
    latest = RetentionPurge.objects.filter(records_purged__gt=0).order_by("-pk").first()
    purged_before = latest.newest_received_at if latest else None
    return {
        "record_retention_days": tenant.record_retention_days,
        "purged_through_sequence": latest.through_sequence if latest else 0,
        "purged_received_until": _iso(purged_before),
        "period_partly_purged": bool(purged_before and start <= purged_before),
    }


def _section_failures(
    groups: dict[str, list[dict[str, Any]]], *, start: datetime, end: datetime, key_prefix: str | None
) -> dict:
    not_failures = (InferenceRecord.Status.OK, InferenceRecord.Status.REFUSED)
    failures = [
        {
            "model_name": row["model_name"],
            "model_version": row["model_version"],
            "status": row["status"],
            "error_code": row["error_code"],
            "count": row["requests"],
        }
        for row in groups["failures"]
        if row["status"] not in not_failures
    ]
    events = AccessEvent.objects.filter(occurred_at__gte=start, occurred_at__lt=end).exclude(reason__in=NOT_DENIALS)
    if key_prefix:
        events = events.filter(key_prefix=key_prefix)
    denials = list(
        events.order_by()
        .values("reason")
        .annotate(count=Count("pk"), first=Min("occurred_at"), last=Max("occurred_at"))
        .order_by("reason")
    )
    return {
        "failures": failures,
        "failure_count": sum(row["count"] for row in failures),
        "access_denials": [{**row, "first": _iso(row["first"]), "last": _iso(row["last"])} for row in denials],
        "access_denial_count": sum(row["count"] for row in denials),
    }


def _section_chain() -> dict[str, Any]:
    """The whole chain is verified, not only the period: a break anywhere casts doubt on every later record.

    The walk starts after the latest checkpoint (see `ChainCheckpoint`), and the section says so: which record
    it started after and when that point was verified, or `from_sequence` 0 for a walk from the first record.
    """
    result = chain_verify(since_checkpoint=True)
    head = ChainHead.objects.filter(pk=ChainHead.SINGLETON_ID).first()
    return {
        "ok": result.ok,
        "checked": result.checked,
        "from_sequence": result.from_sequence,
        "checkpoint_verified_at": _iso(result.checkpoint_at),
        "first_broken_sequence": result.first_broken_sequence,
        "problem": result.problem,
        "purged_through": result.purged_through,
        "head_sequence": head.sequence if head else 0,
        "head_hash": head.last_hash if head else "0" * 64,
        "verified_at": _iso(timezone.now()),
    }


def report_build(
    *,
    start: datetime,
    end: datetime,
    model_name: str | None = None,
    key_prefix: str | None = None,
    progress: Progress | None = None,
) -> BuiltReport:
    """The report on records received in [start, end) of the current tenant: JSON-ready content and input hashes.

    `progress(percent)` is called after each section, so a long report shows how far it got.
    """
    step = progress or (lambda percent: None)
    filters = {"start": start, "end": end, "model_name": model_name, "key_prefix": key_prefix}
    groups = _groupings(**filters)
    totals = groups["totals"][0] if groups["totals"] else {"requests": 0, "ok": 0, "refused": 0}
    # The retention policy as stored now: the connection's tenant may be a cached copy.
    tenant = Tenant.objects.get(schema_name=connection.schema_name)
    content: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "tenant": connection.schema_name,
        "generated_at": _iso(timezone.now()),
        "period": {"start": _iso(start), "end": _iso(end)},
        "filters": {"model_name": model_name or None, "key_prefix": key_prefix or None},
        "totals": {name: totals[name] for name in ("requests", "ok", "refused")},
    }
    step(10)
    content["usage"] = _section_usage(groups)
    step(30)
    content["versions"] = _section_versions(groups, start=start, end=end, model_name=model_name)
    step(50)
    content["data"], input_hashes = _section_data(groups, tenant, **filters)
    step(70)
    content["failures"] = _section_failures(groups, start=start, end=end, key_prefix=key_prefix)
    step(80)
    content["chain"] = _section_chain()
    content["retention"] = _section_retention(tenant, start=start)
    step(100)
    return BuiltReport(content=content, input_hashes=input_hashes)


# --- the stored input hashes ----------------------------------------------------------------------------------

# Bytes of the stored list read per query: about 15,600 hashes, so a download holds a megabyte of them at a time.
SLICE_BYTES = 1 << 20
# The printable page lists the input hashes up to this many (some 50 printed pages); beyond, the downloads do.
PRINTED_HASHES_MAX = 5_000
# Between two strings of a compact JSON array. It cannot occur inside one, where every quote is escaped.
_BETWEEN = b'","'


def input_hashes_json(report: ComplianceReport) -> Iterator[bytes]:
    """The report's input hashes as stored (the canonical JSON of the sorted list), slice by slice.

    The column is stored uncompressed, so each slice costs PostgreSQL only its own pages. A report of format 1
    kept the list in its content. Nothing comes out when the stored list is missing.
    """
    data = report.content["data"]
    if "input_hashes" in data:
        yield canonical_json(data["input_hashes"])
        return
    table = ComplianceReportInputHashes._meta.db_table  # a constant identifier; values are parameters
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT octet_length(hashes) FROM {table} WHERE report_id = %s", [report.pk])  # noqa: S608
        row = cursor.fetchone()
        for start in range(1, row[0] + 1 if row else 1, SLICE_BYTES):
            cursor.execute(
                f"SELECT substring(hashes FROM %s FOR %s) FROM {table} WHERE report_id = %s",  # noqa: S608
                [start, SLICE_BYTES, report.pk],
            )
            yield bytes(cursor.fetchone()[0])


def _json_string(raw: bytes) -> str:
    return raw.decode() if b"\\" not in raw else json.loads(b'"' + raw + b'"')


def report_input_hashes(report: ComplianceReport) -> Iterator[str]:
    """The report's input hashes one by one, read slice by slice: a million never sit in memory as a list."""
    pending, opening = b"", len(b'["')
    for piece in input_hashes_json(report):
        *complete, pending = (pending + piece).split(_BETWEEN)
        for raw in complete:
            yield _json_string(raw[opening:])
            opening = 0
    if pending not in (b"", b"[]"):
        yield _json_string(pending[opening : -len(b'"]')])


def report_input_hashes_printed(report: ComplianceReport) -> list[str] | None:
    """The hashes the printable page lists, or None when there are too many to print."""
    if report.content["data"]["input_hash_count"] > PRINTED_HASHES_MAX:
        return None
    return list(report_input_hashes(report))


# --- renderers ------------------------------------------------------------------------------------------------

_CSV_SECTIONS: tuple[tuple[str, Callable[[dict], list[dict]], tuple[str, ...]], ...] = (
    (
        "usage by user",
        lambda c: c["usage"]["by_user"],
        ("user_id", "user_email", "requests", "ok", "refused", "first_use", "last_use"),
    ),
    (
        "usage by key",
        lambda c: c["usage"]["by_key"],
        ("key_prefix", "requests", "ok", "refused", "first_use", "last_use"),
    ),
    (
        "usage by user and key",
        lambda c: c["usage"]["by_user_and_key"],
        ("user_id", "user_email", "key_prefix", "requests", "ok", "refused", "first_use", "last_use"),
    ),
    (
        "versions served",
        lambda c: c["versions"]["versions"],
        ("model_name", "model_version", "requests", "ok", "first_served", "last_served"),
    ),
    (
        "alias changes",
        lambda c: c["versions"]["alias_changes"],
        ("changed_at", "model_name", "alias", "kind", "from_version", "to_version", "actor_email", "reason"),
    ),
    (
        "data processed",
        lambda c: c["data"]["by_version"],
        ("model_name", "model_version", "requests", "distinct_inputs"),
    ),
    (
        "failures",
        lambda c: c["failures"]["failures"],
        ("model_name", "model_version", "status", "error_code", "count"),
    ),
    ("access denials", lambda c: c["failures"]["access_denials"], ("reason", "count", "first", "last")),
)


def report_csv_rows(*, report: ComplianceReport) -> Iterator[list[Any]]:
    """The report as CSV rows: a header block, then each section (a title row, a header row, its rows).

    The last section, the input hashes, is read from storage as it is written out.
    """
    content, chain = report.content, report.content["chain"]
    yield ["compliance report", content.get("report", {}).get("id")]
    yield ["tenant", content["tenant"]]
    yield ["period start", content["period"]["start"]]
    yield ["period end (exclusive)", content["period"]["end"]]
    yield ["model filter", content["filters"]["model_name"] or ""]
    yield ["key filter", content["filters"]["key_prefix"] or ""]
    yield ["generated at", content["generated_at"]]
    yield ["payload retention", content["data"]["payload_retention"]]
    retention = content.get("retention")
    if retention:
        yield ["record retention days", retention["record_retention_days"]]
        yield ["records purged through sequence", retention["purged_through_sequence"]]
        yield ["purged records received until", retention["purged_received_until"] or ""]
        yield ["period partly purged", "yes" if retention["period_partly_purged"] else "no"]
    yield ["chain intact", "yes" if chain["ok"] else "NO"]
    yield ["chain records checked", chain["checked"]]
    yield ["chain first broken record", chain["first_broken_sequence"] or ""]
    yield ["chain problem", chain["problem"]]
    yield ["chain head sequence", chain["head_sequence"]]
    yield ["chain head hash", chain["head_hash"]]
    yield ["content sha256", report.content_sha256]
    yield ["input hashes", content["data"]["input_hash_count"]]
    yield ["input hashes sha256", content["data"].get("input_hashes_sha256", "")]
    for title, rows, columns in _CSV_SECTIONS:
        yield []
        yield ["section", title]
        yield list(columns)
        for row in rows(content):
            yield [row.get(column) for column in columns]
    yield []
    yield ["section", "input hashes"]
    yield ["input_sha256"]
    for digest in report_input_hashes(report):
        yield [digest]


def report_csv_lines(*, report: ComplianceReport) -> Iterator[str]:
    """CSV text, line by line, with every cell made spreadsheet-safe (no formula injection from a reason)."""
    writer = csv.writer(_Echo())
    for row in report_csv_rows(report=report):
        yield writer.writerow([csv_safe(value) for value in row])


# Where the stored list goes in the JSON download: the one top-level line of the envelope that names it (keys
# of the content are indented deeper, and a JSON string never holds a raw newline).
_LIST_LINE = '\n  "input_hashes": null,\n'


def report_json_chunks(*, report: ComplianceReport) -> Iterator[bytes]:
    """The content exactly as hashed, and the input hashes exactly as stored, in an envelope that says how each is
    hashed: `sha256` is of the canonical JSON of `content`, whose `data.input_hashes_sha256` is of the bytes of
    `input_hashes` as written here. The list is written slice by slice as it is read."""
    envelope = {
        "sha256": report.content_sha256,
        "sha256_of": "canonical JSON of `content`",
        "content": report.content,
        "input_hashes": None,
    }
    if "input_hashes_sha256" in report.content["data"]:  # not in reports of format 1, which hold the list
        envelope["input_hashes_sha256_of"] = (
            "`input_hashes` exactly as written here, the canonical JSON of the sorted list; it equals"
            " `content.data.input_hashes_sha256`, which `sha256` covers"
        )
    head, tail = json.dumps(envelope, ensure_ascii=False, indent=2, sort_keys=True).split(_LIST_LINE)
    yield f'{head}\n  "input_hashes": '.encode()
    written = False
    for piece in input_hashes_json(report):
        written = True
        yield piece
    yield f"{'' if written else 'null'},\n{tail}".encode()
