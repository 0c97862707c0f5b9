from celery import shared_task

from apps.inference.jobs import jobs_due_schemas, jobs_sweep
from apps.inference.worker import predict_run
from apps.tenants.tasks import send_to_tenants, tenant_schema_names

# A sweep still queued when the next round is sent is redundant: the next one does the same work.
SWEEP_EXPIRES_SECONDS = 10


# Acknowledged when it starts and never re-run by Celery: a request that may have reached a model is not sent
# twice. If its worker dies, the waiting web process records the request as `worker_lost`.
@shared_task(acks_late=False, reject_on_worker_lost=False, ignore_result=True)
def predict_on_worker(envelope: dict) -> str:
    """Runs on a worker of the model's GPU pool (`pool.<gpu_pool>`), in the tenant's schema."""
    return predict_run(envelope)


@shared_task(expires=SWEEP_EXPIRES_SECONDS)
def sweep_jobs() -> int:
    """Runs in one tenant's schema: records its async jobs that nobody answered by their deadline."""
    return jobs_sweep()


@shared_task(runs_in_public_schema=True, expires=SWEEP_EXPIRES_SECONDS)
def sweep_jobs_everywhere() -> int:
    """Beat entry point: one sweep per tenant that has a job past its deadline."""
    return send_to_tenants(sweep_jobs, jobs_due_schemas(schema_names=tenant_schema_names()))
