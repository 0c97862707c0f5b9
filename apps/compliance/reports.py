"""What a compliance report says: who used which model, what answered, what was processed, what failed.

Every figure comes from an aggregate query (GROUP BY in PostgreSQL), so a period of a million records costs a
handful of queries, not a million rows in Python; only the input hashes are streamed, since the report must
list them. The content is plain JSON data (strings, numbers, lists), so its canonical form, and hence its
SHA-256, is the same wherever it is recomputed.
"""

import csv
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from django.db import connection
from django.db.models import Count, Max, Min
from django.utils import timezone

from apps.accounts.models import User
from apps.compliance.exports import _Echo, csv_safe
from apps.compliance.models import AccessEvent, ChainHead, InferenceRecord
from apps.compliance.records import chain_verify
from apps.registry.models import AliasChange

REPORT_FORMAT = 1

# Sign-ins worth auditing are not denials: the report's section (d) lists only refused access.
NOT_DENIALS = (
    AccessEvent.Reason.LOGIN,
    AccessEvent.Reason.ADMIN_LOGIN,
    AccessEvent.Reason.TOTP_ENROLLED,
    AccessEvent.Reason.RECOVERY_CODE_USED,
)
PAYLOAD_RETENTION = "not retained"
PAYLOAD_RETENTION_NOTE = (
    "Inputs and outputs are never stored: the record keeps only their SHA-256 hashes and request metadata."
)

Progress = Callable[[int], None]


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


def _emails(user_ids: set[int]) -> dict[int, str]:
    """One query for every user the report names: records keep plain user ids, not foreign keys."""
    return dict(User.objects.filter(pk__in=user_ids).values_list("pk", "email"))


# One pass over the period's records yields every grouping the report needs: PostgreSQL hashes all of them in the
# same scan, where a query per grouping would read a million rows six times. Rows come back ordered by grouping
# and then by its own columns, so each section keeps the order a query of its own would give it.
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


def _groupings(**filters) -> dict[str, list[dict[str, Any]]]:
    """Every grouping of `_GROUPINGS` over the filtered records, in one query."""
    where, params = _where(**filters)
    columns = ", ".join(_GROUP_COLUMNS)
    sets = ", ".join(f"({', '.join(by)})" for by in _GROUPINGS.values())
    # Only constant identifiers are formatted in; every value is a query parameter.
    sql = (
        f"SELECT GROUPING({columns}), {columns}, count(*),"  # noqa: S608
        " count(*) FILTER (WHERE status = %s), count(*) FILTER (WHERE status = %s),"
        " min(received_at), max(received_at)"
        f" FROM {InferenceRecord._meta.db_table} WHERE {where}"
        f" GROUP BY GROUPING SETS ({sets}) ORDER BY 1, {columns}"
    )
    names = {_grouping_mask(by): name for name, by in _GROUPINGS.items()}
    result: dict[str, list[dict[str, Any]]] = {name: [] for name in _GROUPINGS}
    with connection.cursor() as cursor:
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


def _section_data(**filters) -> dict[str, Any]:
    """Distinct inputs per version and the sorted list of every distinct input hash, from one sort.

    The hashes are lowercase hex, which sorts the same under every collation, so the byte order of
    `COLLATE "C"` gives the same list as the database's collation at a fraction of the cost; they come back as
    one string rather than a million rows.
    """
    where, params = _where(**filters)
    table = InferenceRecord._meta.db_table  # constant identifiers are formatted in, values are parameters
    with connection.cursor() as cursor:
        cursor.execute(
            'SELECT model_name, model_version, count(*), count(DISTINCT input_sha256 COLLATE "C")'  # noqa: S608
            f" FROM {table} WHERE {where} GROUP BY model_name, model_version ORDER BY model_name, model_version",
            params,
        )
        counts = [
            {"model_name": name, "model_version": version, "requests": requests, "distinct_inputs": distinct}
            for name, version, requests, distinct in cursor.fetchall()
        ]
        cursor.execute(
            "SELECT string_agg(input_sha256, ',' ORDER BY input_sha256) FROM"  # noqa: S608
            f' (SELECT DISTINCT input_sha256 COLLATE "C" AS input_sha256 FROM {table} WHERE {where}) AS inputs',
            params,
        )
        joined = cursor.fetchone()[0]
    input_hashes = joined.split(",") if joined else []
    return {
        "by_version": counts,
        "input_hash_count": len(input_hashes),
        "input_hashes": input_hashes,
        "payload_retention": PAYLOAD_RETENTION,
        "payload_retention_note": PAYLOAD_RETENTION_NOTE,
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
) -> dict[str, Any]:
    """The report on records received in [start, end) of the current tenant, as JSON-ready data.

    `progress(percent)` is called after each section, so a long report shows how far it got.
    """
    step = progress or (lambda percent: None)
    filters = {"start": start, "end": end, "model_name": model_name, "key_prefix": key_prefix}
    groups = _groupings(**filters)
    totals = groups["totals"][0] if groups["totals"] else {"requests": 0, "ok": 0, "refused": 0}
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
    content["data"] = _section_data(**filters)
    step(70)
    content["failures"] = _section_failures(groups, start=start, end=end, key_prefix=key_prefix)
    step(80)
    content["chain"] = _section_chain()
    step(100)
    return content


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
    (
        "input hashes",
        lambda c: [{"input_sha256": value} for value in c["data"]["input_hashes"]],
        ("input_sha256",),
    ),
)


def report_csv_rows(*, content: dict, sha256: str) -> Iterator[list[Any]]:
    """The report as CSV rows: a header block, then each section (a title row, a header row, its rows)."""
    chain = content["chain"]
    yield ["compliance report", content.get("report", {}).get("id")]
    yield ["tenant", content["tenant"]]
    yield ["period start", content["period"]["start"]]
    yield ["period end (exclusive)", content["period"]["end"]]
    yield ["model filter", content["filters"]["model_name"] or ""]
    yield ["key filter", content["filters"]["key_prefix"] or ""]
    yield ["generated at", content["generated_at"]]
    yield ["payload retention", content["data"]["payload_retention"]]
    yield ["chain intact", "yes" if chain["ok"] else "NO"]
    yield ["chain records checked", chain["checked"]]
    yield ["chain first broken record", chain["first_broken_sequence"] or ""]
    yield ["chain problem", chain["problem"]]
    yield ["chain head sequence", chain["head_sequence"]]
    yield ["chain head hash", chain["head_hash"]]
    yield ["content sha256", sha256]
    for title, rows, columns in _CSV_SECTIONS:
        yield []
        yield ["section", title]
        yield list(columns)
        for row in rows(content):
            yield [row.get(column) for column in columns]


def report_csv_lines(*, content: dict, sha256: str) -> Iterator[str]:
    """CSV text, line by line, with every cell made spreadsheet-safe (no formula injection from a reason)."""
    writer = csv.writer(_Echo())
    for row in report_csv_rows(content=content, sha256=sha256):
        yield writer.writerow([csv_safe(value) for value in row])


def report_json(*, content: dict, sha256: str) -> bytes:
    """The content exactly as hashed (canonical JSON) inside an envelope that names the hash and its method."""
    envelope = {"sha256": sha256, "sha256_of": "canonical JSON of `content`", "content": content}
    return json.dumps(envelope, ensure_ascii=False, indent=2, sort_keys=True).encode("utf-8")
