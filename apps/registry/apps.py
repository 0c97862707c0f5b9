from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "apps.registry"
    label = "registry"
    verbose_name = "Model registry"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from apps.registry.models import AliasChange, ModelAlias, ModelVersion, RegisteredModel

        for model in (RegisteredModel, ModelVersion, ModelAlias, AliasChange):
            auditlog.register(model)
