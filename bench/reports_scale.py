"""Compliance reports over a million inference records of one tenant: how long each section takes.

    make bench-reports
    make bench-reports BENCH_ARGS="--records 200000 --repeat 5"

Creates the tenant `benchreports` (or reuses it when it already holds exactly `--records` records) and loads a
month of records into its schema as one valid hash chain: the hashes are computed here with `record_hash`, the
rows go in with PostgreSQL COPY (the append-only trigger allows INSERT) and the chain head is set at the end, so
`chain_verify` accepts the result as if `record_append` had written every row. Then it times `report_build`
(each section, through its progress callback), the whole `report_generate` path, and the JSON and CSV downloads
of the generated report (read from storage as they stream; each checked against the report's count and SHA-256
of its input hashes) for the month, one day and one model, and `chain_verify` alone, each `--repeat` times, and
prints the medians as a markdown table. The tenant is kept for the next run unless `--drop` is given; the
reports it generated are deleted.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.db import connection, transaction
from django_tenants.utils import schema_context, tenant_context

from apps.compliance.models import ChainHead, ComplianceReport, InferenceRecord
from apps.compliance.records import GENESIS_HASH, RECORD_FIELDS, chain_verify, record_hash
from apps.compliance.reports import report_build, report_csv_lines, report_json_chunks
from apps.compliance.services import report_generate
from apps.tenants.models import Tenant
from apps.tenants.services import tenant_signup

SLUG = "benchreports"
MONTH_START = datetime(2025, 1, 1, tzinfo=UTC)
MONTH_END = datetime(2025, 2, 1, tzinfo=UTC)
USERS = 50
KEYS = 200
MODELS = tuple(f"bench-model-{n}" for n in range(1, 6))
VERSIONS = (1, 2, 3)
FAILURES = (("failed", "model_error"), ("timeout", "upstream_timeout"), ("unavailable", "no_replica"))
# The sections of `report_build`, in the order its progress callback reports them (percent after each).
SECTIONS = {10: "totals", 30: "usage", 50: "versions", 70: "data", 80: "failures", 100: "chain"}


def _record(index: int, *, rng: random.Random, step: float) -> dict:
    """Record number `index` (1-based) of the month: spread evenly over it, a realistic mix of callers and results."""
    received = MONTH_START + timedelta(seconds=(index - 1) * step + rng.random() * step * 0.5)
    key = rng.randrange(KEYS)
    model = rng.randrange(len(MODELS))
    version = VERSIONS[rng.randrange(len(VERSIONS))]
    draw = rng.random()
    status, error_code = "ok", ""
    if draw < 0.015:
        status, error_code = "refused", "rate_limited"
    elif draw < 0.03:
        status, error_code = FAILURES[rng.randrange(len(FAILURES))]
    answered = status == "ok"
    latency = rng.randint(5, 400)
    prompt = rng.randint(10, 2000)
    completion = rng.randint(1, 500) if answered else None
    return {
        "sequence": index,
        "request_id": f"bench-{index:09d}",
        "key_id": key + 1,
        "key_prefix": f"pk_bench{key:04d}",
        "user_id": key % USERS + 1,
        "client_ip": f"10.0.{key % 256}.{model + 1}",
        "model_name": MODELS[model],
        "model_version": version,
        "alias": "production" if version == 3 else "",
        "run_id": f"run{model}{version}",
        "deployment_id": model * 10 + version,
        "server_replica": f"http://replica-{model}-{version}:8080",
        "received_at": received,
        "dispatched_at": received + timedelta(milliseconds=1),
        "answered_at": received + timedelta(milliseconds=latency),
        "status": status,
        "error_code": error_code,
        "input_sha256": hashlib.sha256(b"bench-input-%d" % index).hexdigest(),
        "output_sha256": hashlib.sha256(b"bench-output-%d" % index).hexdigest() if answered else "",
        "latency_ms": latency,
        "upstream_ms": latency - 2 if answered else None,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "tokens_estimated": False,
        "cost": (Decimal(prompt + (completion or 0)) / Decimal(1_000_000)).quantize(Decimal("0.000001")),
    }


def records_load(count: int) -> None:
    """Load `count` records as one valid chain with COPY, and point the chain head at the last one."""
    rng = random.Random(7)  # noqa: S311 (a repeatable workload, not a secret)
    step = (MONTH_END - MONTH_START).total_seconds() / count
    columns = (*RECORD_FIELDS, "prev_hash", "record_hash")
    table = InferenceRecord._meta.db_table
    prev_hash = GENESIS_HASH
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for index in range(1, count + 1):
                fields = _record(index, rng=rng, step=step)
                digest = record_hash(fields, prev_hash)
                copy.write_row((*(fields[name] for name in RECORD_FIELDS), prev_hash, digest))
                prev_hash = digest
                if index % 100_000 == 0:
                    print(f"  {index:,} records ({time.perf_counter() - started:.0f} s)", flush=True)
        ChainHead.objects.update_or_create(
            id=ChainHead.SINGLETON_ID, defaults={"sequence": count, "last_hash": prev_hash}
        )
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {table}")
    print(f"loaded {count:,} records in {time.perf_counter() - started:.1f} s", flush=True)


def tenant_ready(count: int) -> Tenant:
    """The bench tenant holding exactly `count` records: reused when it does, made afresh otherwise."""
    with schema_context("public"):
        tenant = Tenant.objects.filter(schema_name=SLUG).first()
    if tenant is not None:
        with tenant_context(tenant):
            head = ChainHead.objects.filter(id=ChainHead.SINGLETON_ID).first()
            if head is not None and head.sequence == count and InferenceRecord.objects.count() == count:
                print(f"reusing tenant {SLUG} with {count:,} records", flush=True)
                return tenant
        with schema_context("public"):
            tenant.delete(force_drop=True)
    with schema_context("public"):
        tenant = tenant_signup(
            name="Bench reports", slug=SLUG, owner_email="bench@reports.example", owner_password="bench-Password-123"
        ).tenant
    with tenant_context(tenant):
        records_load(count)
    return tenant


def _median_of(repeat: int, run: Callable[[], dict[str, float]]) -> dict[str, float | str]:
    """The median of each figure over `repeat` runs, and its range as "<figure> range"."""
    runs = [run() for _ in range(repeat)]
    medians = {name: statistics.median(one[name] for one in runs) for name in runs[0]}
    ranges = {
        f"{name} range": f"{min(one[name] for one in runs):.2f}-{max(one[name] for one in runs):.2f}"
        for name in runs[0]
    }
    return {**medians, **ranges}


def _build_timed(**filters) -> dict[str, float]:
    """One `report_build`, with the seconds of each section read off its progress callback."""
    marks: list[tuple[int, float]] = []
    started = time.perf_counter()
    content = report_build(**filters, progress=lambda percent: marks.append((percent, time.perf_counter()))).content
    total = time.perf_counter() - started
    times, previous = {}, started
    for percent, moment in marks:
        times[SECTIONS[percent]] = moment - previous
        previous = moment
    return {"records": content["totals"]["requests"], **times, "build": total}


def _generate_timed(**filters) -> dict[str, float]:
    """The Celery task's path (build, hash the canonical JSON, store the content and the input hashes), then the
    JSON and CSV downloads of the report it made, each checked against the count and digest in its content."""
    report = ComplianceReport.objects.create(
        period_start=filters["start"], period_end=filters["end"], model_name=filters.get("model_name") or ""
    )
    started = time.perf_counter()
    report = report_generate(report_id=report.pk)
    generated = time.perf_counter()
    if report.status != ComplianceReport.Status.DONE:
        raise SystemExit(f"report {report.pk} failed: {report.error}")
    listed, previous = hashlib.sha256(), None
    for chunk in itertools.islice(report_json_chunks(report=report), 1, None):  # after the envelope's head
        if previous is not None:  # the last chunk is the envelope's tail
            listed.update(previous)
        previous = chunk
    downloaded = time.perf_counter()
    in_csv, started_list = -1, False  # the section's header row is not a hash
    for line in report_csv_lines(report=report):
        in_csv += started_list
        started_list = started_list or line == "section,input hashes\r\n"
    exported = time.perf_counter()
    data = report.content["data"]
    if listed.hexdigest() != data["input_hashes_sha256"] or in_csv != data["input_hash_count"]:
        raise SystemExit(f"report {report.pk}: its downloads do not match its input hashes")
    ComplianceReport.objects.filter(pk=report.pk).delete()
    return {"generate": generated - started, "json": downloaded - generated, "csv": exported - downloaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records in the month (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="timings per figure; the median is shown")
    parser.add_argument("--drop", action="store_true", help="drop the bench tenant at the end")
    args = parser.parse_args()

    tenant = tenant_ready(args.records)
    try:
        with tenant_context(tenant):
            run(args.records, args.repeat)
    finally:
        if args.drop:
            with schema_context("public"):
                tenant.delete(force_drop=True)


def run(count: int, repeat: int) -> None:
    day = MONTH_START + timedelta(days=14)
    cases = (
        ("the month", {"start": MONTH_START, "end": MONTH_END}),
        ("one day", {"start": day, "end": day + timedelta(days=1)}),
        ("one model, the month", {"start": MONTH_START, "end": MONTH_END, "model_name": MODELS[0]}),
    )
    full = _median_of(repeat, lambda: _timed_verify(full=True))
    rows = []
    for name, filters in cases:
        built = _median_of(repeat, lambda filters=filters: _build_timed(**filters))
        generated = _median_of(repeat, lambda filters=filters: _generate_timed(**filters))
        rows.append((name, built, generated))

    print(f"\n{count:,} records in tenant {SLUG}, median of {repeat}; seconds")
    sections = list(SECTIONS.values())
    print(f"| report | records | {' | '.join(sections)} | report_build | report_generate | JSON | CSV |")
    print(f"| --- | ---: | {' | '.join('---:' for _ in sections)} | ---: | ---: | ---: | ---: |")
    for name, built, generated in rows:
        cells = " | ".join(f"{built[section]:.2f}" for section in sections)
        timings = " | ".join(f"{generated[step]:.2f}" for step in ("generate", "json", "csv"))
        print(f"| {name} | {built['records']:,.0f} | {cells} | {built['build']:.2f} | {timings} |")
    print(f"\nRanges over the {repeat} runs, report_build / report_generate:")
    for name, built, generated in rows:
        print(f"- {name}: {built['build range']} / {generated['generate range']} s")
    print(f"\n`chain_verify` full walk of {count:,} records: {full['seconds']:.2f} s (median of {repeat})")


def _timed_verify(*, full: bool) -> dict[str, float]:
    started = time.perf_counter()
    result = chain_verify()
    elapsed = time.perf_counter() - started
    if not result.ok:
        raise SystemExit(f"chain broken: {result.problem}")
    return {"seconds": elapsed}


if __name__ == "__main__":
    main()
