"""The four roles inside a tenant and what each may do.

Each role is a Django group carrying real permissions; a member has exactly one role.
Later capabilities add their permissions here, and `role_groups_sync` applies them on migrate.
"""

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    DEVELOPER = "developer", "Developer"
    COMPLIANCE_OFFICER = "compliance_officer", "Compliance officer"
    VIEWER = "viewer", "Viewer"


ROLE_PERMISSIONS: dict[Role, list[str]] = {
    Role.OWNER: [
        "accounts.view_user",
        "accounts.add_user",
        "accounts.change_user",
        "accounts.manage_members",
        "apikeys.view_apikey",
        "apikeys.manage_own_keys",
        "apikeys.manage_all_keys",
        "registry.manage_models",
        "registry.view_registeredmodel",
        "registry.view_modelversion",
        "registry.view_modelalias",
        "registry.view_aliaschange",
        "serving.manage_serving",
        "serving.view_modelserver",
        "serving.view_deployment",
        "auditlog.view_logentry",
        "axes.view_accessattempt",
        "axes.view_accesslog",
        "axes.view_accessfailurelog",
        "compliance.view_accessevent",
        "compliance.view_inferencerecord",
        "compliance.view_retentionpurge",
    ],
    Role.DEVELOPER: [
        "accounts.view_user",
        "apikeys.manage_own_keys",
        "registry.manage_models",
        "registry.view_registeredmodel",
        "serving.manage_serving",
        "serving.view_modelserver",
        "serving.view_deployment",
        "compliance.view_inferencerecord",
    ],
    Role.COMPLIANCE_OFFICER: [
        "accounts.view_user",
        "registry.view_registeredmodel",
        "registry.view_modelversion",
        "registry.view_modelalias",
        "registry.view_aliaschange",
        "serving.view_modelserver",
        "serving.view_deployment",
        "apikeys.view_apikey",
        "auditlog.view_logentry",
        "axes.view_accessattempt",
        "axes.view_accesslog",
        "axes.view_accessfailurelog",
        "compliance.view_accessevent",
        "compliance.view_inferencerecord",
        "compliance.view_retentionpurge",
        # Kept payloads are personal data: reading them is the officer's task alone, and each reading is audited.
        "compliance.view_retainedpayload",
    ],
    Role.VIEWER: [
        "accounts.view_user",
        "registry.view_registeredmodel",
        "serving.view_modelserver",
        "serving.view_deployment",
        # Hashes and metadata only, never a payload: the request log is safe for every role to read.
        "compliance.view_inferencerecord",
    ],
}

# Roles whose members may hold API keys; a key whose owner leaves these roles stops working.
KEY_HOLDING_ROLES = frozenset({Role.OWNER, Role.DEVELOPER})

# Roles that may open the tenant's Django admin (read-only for officers, by their permissions).
STAFF_ROLES = frozenset({Role.OWNER, Role.COMPLIANCE_OFFICER})
