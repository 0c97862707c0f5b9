from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"
    verbose_name = "Members and roles"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from apps.accounts.models import User
        from apps.accounts.services import role_groups_sync_after_migrate

        auditlog.register(
            User,
            m2m_fields={"groups"},
            exclude_fields=["password", "last_login"],
        )
        post_migrate.connect(role_groups_sync_after_migrate, sender=self)
