from django.apps import AppConfig


class ServingConfig(AppConfig):
    name = "apps.serving"
    label = "serving"
    verbose_name = "Model servers and deployments"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from apps.serving.models import Deployment, ModelServer, ServerReplica

        # The encrypted header value never enters the audit log: whoever holds the key could read it there.
        auditlog.register(ModelServer, exclude_fields=["auth_header_value_encrypted", "updated"])
        # Health is written every probe by no one in particular; the audit log keeps who changed the addresses.
        auditlog.register(ServerReplica, exclude_fields=["is_up", "status_changed_at", "last_checked_at", "last_error"])
        auditlog.register(Deployment, exclude_fields=["updated"])
