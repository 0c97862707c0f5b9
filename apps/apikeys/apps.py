from django.apps import AppConfig


class ApiKeysConfig(AppConfig):
    name = "apps.apikeys"
    label = "apikeys"
    verbose_name = "API keys"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from apps.apikeys.models import ApiKey

        # The hashes never enter the audit log: they identify the secret as well as the secret does.
        auditlog.register(ApiKey, exclude_fields=["secret_hash", "previous_secret_hash", "last_used_at"])
