from django.apps import AppConfig


class ComplianceConfig(AppConfig):
    name = "apps.compliance"
    label = "compliance"
    verbose_name = "Compliance"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from apps.compliance import signals

        user_logged_in.connect(signals.record_login, dispatch_uid="compliance.record_login")
        user_login_failed.connect(signals.record_login_failed, dispatch_uid="compliance.record_login_failed")
