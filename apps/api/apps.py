from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "apps.api"
    label = "api"
    verbose_name = "REST API ground rules"

    def ready(self) -> None:
        import apps.api.schema  # noqa: F401  (registers the schema's authentication extensions)
