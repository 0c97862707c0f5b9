from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"
    verbose_name = "Members and roles"

    def ready(self) -> None:
        from auditlog.registry import auditlog
        from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
        from django_otp.plugins.otp_totp.models import TOTPDevice

        from apps.accounts.models import User
        from apps.accounts.services import role_groups_sync_after_migrate

        auditlog.register(
            User,
            m2m_fields={"groups"},
            exclude_fields=["password", "last_login"],
        )
        # Second-factor devices: who enrolled and when, never a secret; verification bookkeeping is noise.
        counters = ["throttling_failure_timestamp", "throttling_failure_count", "last_used_at"]
        auditlog.register(TOTPDevice, exclude_fields=["key", "last_t", "drift", *counters])
        auditlog.register(StaticDevice, exclude_fields=counters)
        auditlog.register(StaticToken, exclude_fields=["token"])
        post_migrate.connect(role_groups_sync_after_migrate, sender=self)
