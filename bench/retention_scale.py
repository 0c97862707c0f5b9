"""The retention purge at scale: how long purging most of a large chain takes, and that it still verifies after.

    make bench-retention
    make bench-retention BENCH_ARGS="--records 1000000 --purge-fraction 0.5"

Loads `--records` records spread over a month into a scratch tenant (`benchpurge`, made afresh and dropped at the
end, since a purge consumes its data) as one valid chain, the way `make bench-reports` does, then runs
`retention_purge` at the moment that puts the first `--purge-fraction` of the month past the six-month minimum:
the walk of the run it deletes, its seal and the batched deletes. Then a full `chain_verify` of what is left,
which must pass and start from the seal. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.conf import settings
from django_tenants.utils import schema_context, tenant_context

from apps.compliance.models import InferenceRecord
from apps.compliance.records import chain_verify
from apps.compliance.retention import retention_purge
from apps.tenants.models import RECORD_RETENTION_MIN_DAYS, Tenant
from apps.tenants.services import tenant_signup
from bench.reports_scale import MONTH_END, MONTH_START, records_load

SLUG = "benchpurge"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300_000, help="records in the month (default 300,000)")
    parser.add_argument("--purge-fraction", type=float, default=0.67, help="share of the month past retention")
    args = parser.parse_args()

    with schema_context("public"):
        stale = Tenant.objects.filter(schema_name=SLUG).first()
        if stale is not None:
            stale.delete(force_drop=True)
        tenant = tenant_signup(
            name="Bench purge", slug=SLUG, owner_email="bench@purge.example", owner_password="bench-Password-123"
        ).tenant
    try:
        with tenant_context(tenant):
            records_load(args.records)
            return run(args.records, args.purge_fraction)
    finally:
        with schema_context("public"):
            tenant.delete(force_drop=True)


def run(count: int, fraction: float) -> int:
    cutoff = MONTH_START + (MONTH_END - MONTH_START) * fraction
    now = cutoff + timedelta(days=RECORD_RETENTION_MIN_DAYS)
    started = time.perf_counter()
    seal = retention_purge(now=now)
    purge_seconds = time.perf_counter() - started
    started = time.perf_counter()
    report = chain_verify()
    verify_seconds = time.perf_counter() - started
    left = InferenceRecord.objects.count()
    purged = seal.records_purged if seal else 0
    ok = report.ok and report.purged_through == purged and report.checked == left == count - purged
    batch = settings.RETENTION_PURGE_BATCH
    print(f"\nretention purge of tenant {SLUG}: {count:,} records over a month, batches of {batch:,}")
    print("| records | purged | purge s | purged per s | kept | chain_verify after s | chain |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    print(
        f"| {count:,} | {purged:,} | {purge_seconds:.2f} | {purged / purge_seconds:,.0f} | {left:,} |"
        f" {verify_seconds:.2f} | {'intact, from the seal' if ok else 'PROBLEM: ' + report.problem} |"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
