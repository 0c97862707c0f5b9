"""Writes on the registry: models, versions, aliases, promotion, rollback, archiving.

Each write goes to MLflow and to the tenant's own tables, names its actor in the audit log, and drops
every cached route of the model, so the very next routing decision sees it.
"""

import re
import tempfile
from pathlib import Path

from auditlog.context import set_actor
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.utils import timezone

from apps.accounts.models import User
from apps.api.errors import ApiError
from apps.registry.mlflow_store import mlflow_name, registry_client, tenant_experiment_id
from apps.registry.models import AliasChange, ModelAlias, ModelVersion, RegisteredModel
from apps.registry.packages import ModelPackage, package_describe, package_unpack
from apps.registry.selectors import rollback_target

MODEL_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-)){1,62}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
DEFAULT_ALIAS = "champion"


class Conflict(ApiError):
    def __init__(self, message: str, *, code: str):
        super().__init__(message, code=code, status_code=409)


def _require_manager(actor: User) -> None:
    if not actor.has_perm("registry.manage_models"):
        raise PermissionDenied("Your role cannot change models.")


def _routes_forget(model: RegisteredModel) -> None:
    from apps.serving.selectors import routes_forget

    routes_forget(model=model)


def _after_change(model: RegisteredModel) -> None:
    """Drop cached routes now and again at commit, so no request can re-cache the old state in between."""
    _routes_forget(model)
    transaction.on_commit(lambda: _routes_forget(model))


def model_create(*, actor: User, name: str, description: str = "") -> RegisteredModel:
    _require_manager(actor)
    if not MODEL_NAME_RE.match(name):
        raise ValidationError(
            "Use 2 to 63 lowercase letters, digits and single hyphens, starting with a letter or digit.",
            code="invalid_model_name",
        )
    if RegisteredModel.objects.filter(name=name).exists():
        raise Conflict(f"A model named {name!r} exists already.", code="name_taken")
    from mlflow.exceptions import MlflowException

    with transaction.atomic(), set_actor(actor):
        model = RegisteredModel.objects.create(
            name=name, mlflow_name=mlflow_name(name), description=description, created_by=actor
        )
        try:
            registry_client().create_registered_model(
                model.mlflow_name, tags={"portal.tenant": connection.schema_name}, description=description
            )
        except MlflowException as error:
            # A leftover of an earlier tenant with this slug, or of a failed create: never adopt it.
            if error.error_code == "RESOURCE_ALREADY_EXISTS":
                raise Conflict(f"The name {name!r} cannot be used; choose another.", code="name_taken") from None
            raise
    return model


def version_register_from_upload(*, actor: User, model: RegisteredModel, archive: Path) -> ModelVersion:
    """Register a version from an uploaded zip/tar of an MLflow model directory, logged as a run of the tenant."""
    _require_manager(actor)
    client = registry_client()
    with tempfile.TemporaryDirectory() as unpacked:
        package = package_unpack(archive, Path(unpacked), max_unpacked_bytes=settings.MODEL_UPLOAD_MAX_BYTES * 4)
        run = client.create_run(tenant_experiment_id(), tags={"portal.uploaded_by": actor.email})
        client.log_artifacts(run.info.run_id, str(package.directory), artifact_path="model")
        client.set_terminated(run.info.run_id)
    return _version_register(
        actor=actor, model=model, package=package, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )


def version_register_from_run(
    *, actor: User, model: RegisteredModel, run_id: str, artifact_path: str = "model"
) -> ModelVersion:
    """Register a model logged by a run in the tenant's own experiment; any other run is simply not found."""
    from mlflow.exceptions import MlflowException

    _require_manager(actor)
    client = registry_client()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        run = None
    if run is None or run.info.experiment_id != tenant_experiment_id():
        raise ApiError("There is no such run.", code="run_not_found", status_code=404)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            local = client.download_artifacts(run_id, f"{artifact_path.strip('/')}/MLmodel", scratch)
        except (MlflowException, OSError):
            raise ValidationError(
                f"The run has no MLflow model at {artifact_path!r}.", code="invalid_model_package"
            ) from None
        package = package_describe(Path(local).parent)
    return _version_register(
        actor=actor,
        model=model,
        package=package,
        source=f"{run.info.artifact_uri}/{artifact_path.strip('/')}",
        run_id=run_id,
    )


def _version_register(*, actor: User, model: RegisteredModel, package: ModelPackage, source: str, run_id: str):
    registered = registry_client().create_model_version(name=model.mlflow_name, source=source, run_id=run_id)
    with set_actor(actor):
        return ModelVersion.objects.create(
            model=model,
            version=int(registered.version),
            run_id=run_id,
            source=source,
            flavors=package.flavors,
            signature=package.signature,
            created_by=actor,
        )


def alias_set(
    *,
    actor: User,
    model: RegisteredModel,
    alias: str,
    version: ModelVersion,
    reason: str = "",
    kind: str = AliasChange.Kind.SET,
) -> ModelAlias:
    """Point `alias` at `version` (in MLflow and here) and record the move with its reason."""
    _require_manager(actor)
    if not ALIAS_RE.match(alias) or re.fullmatch(r"v\d+", alias) or alias == "latest":
        raise ValidationError(
            "An alias is a lowercase name (letters, digits, - and _), not 'latest' or 'v<number>'.",
            code="invalid_alias",
        )
    if version.model_id != model.pk:
        raise ApiError("There is no such version.", code="not_found", status_code=404)
    if version.status == ModelVersion.Status.ARCHIVED:
        raise Conflict(f"Version {version.version} is archived.", code="version_archived")
    with transaction.atomic(), set_actor(actor):
        current = ModelAlias.objects.select_for_update().filter(model=model, alias=alias).first()
        previous = current.version.version if current else None
        if previous == version.version:
            return current  # already there: no move, nothing to record or roll back
        if current is None:
            current = ModelAlias.objects.create(model=model, alias=alias, version=version)
        else:
            current.version = version
            current.save(update_fields=["version", "updated"])
        AliasChange.objects.create(
            model=model,
            alias=alias,
            kind=kind,
            from_version=previous,
            to_version=version.version,
            reason=reason,
            actor=actor,
        )
        registry_client().set_registered_model_alias(model.mlflow_name, alias, str(version.version))
        _after_change(model)
    return current


def model_promote(
    *, actor: User, model: RegisteredModel, version: ModelVersion, alias: str = DEFAULT_ALIAS, reason: str = ""
) -> ModelAlias:
    return alias_set(
        actor=actor, model=model, alias=alias, version=version, reason=reason, kind=AliasChange.Kind.PROMOTE
    )


def model_rollback(*, actor: User, model: RegisteredModel, reason: str, alias: str = DEFAULT_ALIAS) -> ModelAlias:
    """Move `alias` back to the version it pointed to before its last move that is not already undone.

    Rollbacks stack: after v1 -> v2 -> v3, one rollback returns to v2 and the next to v1.
    """
    _require_manager(actor)
    if not reason.strip():
        raise ValidationError("Say why you roll back.", code="reason_required")
    target_version = rollback_target(model=model, alias=alias)
    if target_version is None:
        raise Conflict(f"{model.name}@{alias} has no earlier version to roll back to.", code="nothing_to_roll_back")
    target = ModelVersion.objects.get(model=model, version=target_version)
    return alias_set(
        actor=actor, model=model, alias=alias, version=target, reason=reason.strip(), kind=AliasChange.Kind.ROLLBACK
    )


def version_archive(*, actor: User, version: ModelVersion, reason: str = "") -> ModelVersion:
    """Retire a version: it keeps its history but can no longer be aliased, deployed or pinned."""
    _require_manager(actor)
    if version.status == ModelVersion.Status.ARCHIVED:
        return version
    if ModelAlias.objects.filter(version=version).exists():
        raise Conflict("An alias points to this version; move it first.", code="version_in_use")
    if _served_by_a_deployment(version):
        raise Conflict("An active deployment serves this version; change it first.", code="version_in_use")
    with transaction.atomic(), set_actor(actor):
        version.status = ModelVersion.Status.ARCHIVED
        version.archived_at = timezone.now()
        version.save(update_fields=["status", "archived_at"])
        registry_client().set_model_version_tag(
            version.model.mlflow_name, str(version.version), "portal.archived", reason or "true"
        )
        _after_change(version.model)
    return version


def _served_by_a_deployment(version: ModelVersion) -> bool:
    from django.db.models import Q

    from apps.serving.models import Deployment

    return Deployment.objects.filter(Q(version=version) | Q(canary_version=version), is_active=True).exists()
