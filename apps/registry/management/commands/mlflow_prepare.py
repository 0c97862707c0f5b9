"""Create and migrate MLflow's store once, before web, workers or model servers touch it."""

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.registry.mlflow_store import store_prepare


class Command(BaseCommand):
    help = "Create MLflow's database if missing and run its schema migration (mlflow db upgrade)."

    def handle(self, *args, **options) -> None:
        store_prepare()
        self.stdout.write(f"MLflow store ready; artifacts under {settings.MLFLOW_ARTIFACT_ROOT}")
