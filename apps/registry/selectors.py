"""Reads on the registry. A model is found by its name in the tenant's own table, never by an MLflow name."""

from django.db.models import Prefetch, QuerySet
from django.shortcuts import get_object_or_404

from apps.registry.models import AliasChange, ModelAlias, ModelVersion, RegisteredModel


def model_list() -> QuerySet[RegisteredModel]:
    return RegisteredModel.objects.prefetch_related(
        Prefetch("aliases", queryset=ModelAlias.objects.select_related("version"))
    ).order_by("name")


def model_get(*, name: str) -> RegisteredModel:
    return get_object_or_404(model_list(), name=name)


def version_list(*, model: RegisteredModel) -> QuerySet[ModelVersion]:
    return model.versions.select_related("created_by").prefetch_related("aliases").order_by("-version")


def version_get(*, model: RegisteredModel, version: int) -> ModelVersion:
    return get_object_or_404(version_list(model=model), version=version)


def alias_history(*, model: RegisteredModel) -> QuerySet[AliasChange]:
    return model.alias_changes.select_related("actor")


def rollback_target(*, model: RegisteredModel, alias: str) -> int | None:
    """The version a rollback of `alias` returns to: walking the history back, each rollback undoes one move."""
    undone = 0
    for change in AliasChange.objects.filter(model=model, alias=alias).exclude(kind=AliasChange.Kind.REMOVE):
        if change.kind == AliasChange.Kind.ROLLBACK:
            undone += 1
        elif undone:
            undone -= 1
        else:
            return change.from_version
    return None
