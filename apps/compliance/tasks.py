"""Draining the access-event buffer into each tenant's schema, and generating compliance reports."""

from celery import shared_task
from django.db import connection

from apps.compliance.services import access_events_flush, access_events_pending, report_generate
from apps.tenants.tasks import send_to_tenants, tenant_schema_names


@shared_task
def flush_access_events() -> int:
    """Runs in the sender's tenant schema, so the rows land where the requests were refused."""
    return access_events_flush(schema_name=connection.schema_name)


@shared_task(runs_in_public_schema=True)
def flush_access_events_everywhere() -> int:
    """Beat entry point: one flush task per tenant that has something buffered."""
    return send_to_tenants(flush_access_events, access_events_pending(schema_names=tenant_schema_names()))


@shared_task
def generate_compliance_report(*, report_id: int) -> str:
    """Runs in the requesting tenant's schema; a report already finished is left alone (at-least-once delivery)."""
    return report_generate(report_id=report_id).status


@shared_task
def verify_chain() -> bool:
    """A full walk of the tenant's chain: catches a change anywhere, before the latest checkpoint too.

    Reports verify only what was appended since the last checkpoint, so this scheduled full walk is what keeps
    an old record's tampering from going unnoticed; a broken chain is logged as an error for the operators.
    """
    import logging

    from apps.compliance.records import chain_verify

    report = chain_verify()
    if not report.ok:
        logging.getLogger(__name__).error(
            "inference record chain of %s broken at record %s: %s",
            connection.schema_name,
            report.first_broken_sequence,
            report.problem,
        )
    return report.ok


@shared_task(runs_in_public_schema=True)
def verify_chains_everywhere() -> int:
    """Beat entry point (daily): one full chain walk per tenant."""
    return send_to_tenants(verify_chain, tenant_schema_names())


@shared_task
def purge_past_retention() -> int:
    """Purge what the tenant's retention policy no longer keeps; returns the records purged."""
    from apps.compliance.retention import retention_purge

    seal = retention_purge()
    return seal.records_purged if seal else 0


@shared_task(runs_in_public_schema=True)
def purge_past_retention_everywhere() -> int:
    """Beat entry point (hourly): one purge per tenant, each in its own schema and at its own policy."""
    return send_to_tenants(purge_past_retention, tenant_schema_names())
