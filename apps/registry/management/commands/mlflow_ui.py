"""MLflow's own UI on the portal's store, for operators: every tenant's models, so never expose it."""

import os
import sys

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run `mlflow ui` on the portal's MLflow store (loopback only)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", default=os.environ.get("MLFLOW_UI_PORT", "5050"))

    def handle(self, *args, port: str, **options) -> None:
        self.stdout.write(f"MLflow UI on http://127.0.0.1:{port}/ (Ctrl-C stops it)")
        os.execv(  # noqa: S606 (replaces this process with mlflow's; the arguments are ours)
            sys.executable,
            [
                sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
                "--backend-store-uri", settings.MLFLOW_TRACKING_URI,
                "--default-artifact-root", settings.MLFLOW_ARTIFACT_ROOT,
            ],
        )  # fmt: skip
