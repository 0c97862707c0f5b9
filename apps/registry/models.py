"""The tenant's view of its models. MLflow holds the models themselves; these rows say which of MLflow's
registered models belong to this tenant, and keep versions, aliases and their history queryable per tenant."""

from django.conf import settings
from django.db import models


class RegisteredModel(models.Model):
    """A model of this tenant; in MLflow it is registered as `<schema>__<name>`, a name only the portal uses."""

    name = models.CharField(max_length=63, unique=True)
    mlflow_name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        permissions = [("manage_models", "Can register, promote, roll back and archive models")]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    """One registered version, with what the portal needs without asking MLflow: signature, flavour, run."""

    class Status(models.TextChoices):
        READY = "ready", "Ready"
        ARCHIVED = "archived", "Archived"

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    run_id = models.CharField(max_length=64, blank=True)
    source = models.CharField(max_length=500)
    flavors = models.JSONField(default=list)
    signature = models.JSONField(null=True, blank=True, help_text="MLflow signature: inputs, outputs, params")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.READY)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created = models.DateTimeField(auto_now_add=True)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["model", "-version"]
        constraints = [models.UniqueConstraint(fields=["model", "version"], name="unique_model_version")]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.version}"


class ModelAlias(models.Model):
    """Where an alias (`champion`, `challenger`, any name) points now."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    alias = models.CharField(max_length=63)
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model", "alias"]
        constraints = [models.UniqueConstraint(fields=["model", "alias"], name="unique_model_alias")]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.alias} -> v{self.version.version}"


class AliasChange(models.Model):
    """Every move of an alias, with who, why and from which version: the history rollback walks back."""

    class Kind(models.TextChoices):
        SET = "set", "Set"
        PROMOTE = "promote", "Promote"
        ROLLBACK = "rollback", "Rollback"
        REMOVE = "remove", "Remove"

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="alias_changes")
    alias = models.CharField(max_length=63)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    from_version = models.PositiveIntegerField(null=True, blank=True)
    to_version = models.PositiveIntegerField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    changed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-changed_at", "-pk"]
        indexes = [models.Index(fields=["model", "alias", "-changed_at"])]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.alias}: {self.from_version} -> {self.to_version} ({self.kind})"
