"""Django's admin app, with the two-factor site as its default `admin.site`.

Kept apart from `admin_site` because app configs are imported before any model may be.
"""

from django.contrib.admin.apps import AdminConfig


class TwoFactorAdminConfig(AdminConfig):
    default_site = "apps.accounts.admin_site.TwoFactorAdminSite"
