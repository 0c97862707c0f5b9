from celery import shared_task

from apps.inference.worker import predict_run


# Acknowledged when it starts and never re-run by Celery: a request that may have reached a model is not sent
# twice. If its worker dies, the waiting web process records the request as `worker_lost`.
@shared_task(acks_late=False, reject_on_worker_lost=False, ignore_result=True)
def predict_on_worker(envelope: dict) -> str:
    """Runs on a worker of the model's GPU pool (`pool.<gpu_pool>`), in the tenant's schema."""
    return predict_run(envelope)
