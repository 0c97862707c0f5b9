"""The portal's models, model servers and deployments pages: thin views over the registry and serving services.

Every change that moves traffic or retires something (promote, roll back, archive, deactivate) is asked for on a
confirmation page first: a GET shows what will change and never changes anything.
"""

import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from redis.exceptions import RedisError

from apps.api.errors import ApiError
from apps.inference.balancer import CircuitState, circuit_states
from apps.portal.forms import (
    ArchiveForm,
    DeploymentCreateForm,
    ModelCreateForm,
    PromoteForm,
    RollbackForm,
    ServerCreateForm,
    VersionUploadForm,
    service_error_message,
    service_error_status,
)
from apps.registry import selectors as registry_selectors
from apps.registry import services as registry_services
from apps.registry.models import ModelVersion, RegisteredModel
from apps.serving import selectors as serving_selectors
from apps.serving import services as serving_services
from apps.serving.models import ModelServer
from apps.serving.services import PRICE_FIELDS

VIEW_MODELS = "registry.view_registeredmodel"
MANAGE_MODELS = "registry.manage_models"
VIEW_SERVERS = "serving.view_modelserver"
VIEW_DEPLOYMENTS = "serving.view_deployment"
MANAGE_SERVING = "serving.manage_serving"
# A PermissionDenied of a service is left to Django: the 403 page.
SERVICE_ERRORS = (ValidationError, ApiError)
CONFIRMED = "yes"
ALIAS_HISTORY_SHOWN = 50


def _create_form_flow(request: HttpRequest, form_class, can_manage: bool, create, on_success):
    """The list pages' create form: (form or None, redirect or None, status). Refuses non-managers' POSTs."""
    if request.method == "POST" and not can_manage:
        raise PermissionDenied
    form = form_class(request.POST if request.method == "POST" else None) if can_manage else None
    if form is None or not form.is_bound:
        return form, None, 200
    if not form.is_valid():
        return form, None, 400
    try:
        created = create(form)
    except SERVICE_ERRORS as error:
        form.add_service_error(error)
        return form, None, service_error_status(error)
    return form, on_success(created), 200


# --- models ----------------------------------------------------------------------------------------------------


@login_required
@permission_required(VIEW_MODELS, raise_exception=True)
@require_http_methods(["GET", "POST"])
def models(request: HttpRequest) -> HttpResponse:
    """The tenant's models; managers also get the form that creates one."""
    can_manage = request.user.has_perm(MANAGE_MODELS)

    def created(model):
        messages.success(request, f"Model {model.name} is created. Upload its first version.")
        return redirect("model_detail", name=model.name)

    form, done, status = _create_form_flow(
        request,
        ModelCreateForm,
        can_manage,
        lambda form: registry_services.model_create(actor=request.user, **form.cleaned_data),
        created,
    )
    if done:
        return done
    rows = registry_selectors.model_list().annotate(version_count=Count("versions"))
    context = {"models": rows, "form": form, "can_manage": can_manage}
    return render(request, "portal/models.html", context, status=status)


@login_required
@permission_required(VIEW_MODELS, raise_exception=True)
@require_http_methods(["GET"])
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    return _detail_page(request, registry_selectors.model_get(name=name))


@login_required
@permission_required(MANAGE_MODELS, raise_exception=True)
@require_POST
def version_upload(request: HttpRequest, name: str) -> HttpResponse:
    """Register a new version from an uploaded package, streamed to a scratch file first."""
    model = registry_selectors.model_get(name=name)
    form = VersionUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _detail_page(request, model, upload_form=form, status=400)
    try:
        version = _register_upload(request, model, form.cleaned_data["file"])
    except SERVICE_ERRORS as error:
        form.add_service_error(error)
        return _detail_page(request, model, upload_form=form, status=service_error_status(error))
    messages.success(request, f"Registered {model.name} v{version.version}.")
    return redirect("model_detail", name=model.name)


def _register_upload(request: HttpRequest, model: RegisteredModel, upload) -> ModelVersion:
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "package"
        with archive.open("wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)
        return registry_services.version_register_from_upload(actor=request.user, model=model, archive=archive)


@login_required
@permission_required(MANAGE_MODELS, raise_exception=True)
@require_http_methods(["GET", "POST"])
def model_promote(request: HttpRequest, name: str) -> HttpResponse:
    """GET (the detail page's form) shows "alias: vA → vB"; the confirmed POST moves the alias."""
    model = registry_selectors.model_get(name=name)
    versions = list(registry_selectors.version_list(model=model))
    form = PromoteForm(_data_of(request), versions=versions)
    if not form.is_valid():
        return _detail_page(request, model, versions=versions, promote_form=form, status=400)
    alias, number, reason = form.cleaned_data["alias"], form.cleaned_data["version"], form.cleaned_data["reason"]
    current = _alias_target(model, alias)
    if not _confirmed(request):
        return _confirm_page(
            request,
            title=f"Promote {model.name} v{number} to {alias}?",
            changes=[f"{alias}: {_label(current)} → v{number}"],
            reason=reason,
            note=f"{alias} points to v{number} already: nothing would change." if current == number else "",
            action=reverse("model_promote", args=[model.name]),
            fields=form.cleaned_data,
            button="Promote",
            cancel=reverse("model_detail", args=[model.name]),
            blocked=current == number,
        )
    version = next(row for row in versions if row.version == number)
    return _perform(
        request,
        lambda: registry_services.model_promote(
            actor=request.user, model=model, version=version, alias=alias, reason=reason
        ),
        success=f"{model.name}@{alias}: {_label(current)} → v{number}.",
        model=model,
        promote_form=form,
    )


@login_required
@permission_required(MANAGE_MODELS, raise_exception=True)
@require_http_methods(["GET", "POST"])
def model_rollback(request: HttpRequest, name: str) -> HttpResponse:
    """GET shows where the alias goes back to; the confirmed POST rolls it back, with its reason."""
    model = registry_selectors.model_get(name=name)
    form = RollbackForm(_data_of(request), aliases=_alias_names(model))
    if not form.is_valid():
        return _detail_page(request, model, rollback_form=form, status=400)
    alias, reason = form.cleaned_data["alias"], form.cleaned_data["reason"]
    current, target = _alias_target(model, alias), registry_selectors.rollback_target(model=model, alias=alias)
    if not _confirmed(request):
        if target is None:
            messages.error(request, f"{model.name}@{alias} has no earlier version to roll back to.")
            return _detail_page(request, model, rollback_form=form, status=409)
        return _confirm_page(
            request,
            title=f"Roll back {model.name}@{alias}?",
            changes=[f"{alias}: {_label(current)} → v{target}"],
            reason=reason,
            action=reverse("model_rollback", args=[model.name]),
            fields=form.cleaned_data,
            button="Roll back",
            cancel=reverse("model_detail", args=[model.name]),
            danger=True,
        )
    return _perform(
        request,
        lambda: registry_services.model_rollback(actor=request.user, model=model, alias=alias, reason=reason),
        success=f"{model.name}@{alias} is rolled back.",
        model=model,
        rollback_form=form,
    )


@login_required
@permission_required(MANAGE_MODELS, raise_exception=True)
@require_http_methods(["GET", "POST"])
def version_archive(request: HttpRequest, name: str, version: int) -> HttpResponse:
    """GET asks for confirmation; the confirmed POST retires the version (the service refuses an aliased one)."""
    model = registry_selectors.model_get(name=name)
    model_version = registry_selectors.version_get(model=model, version=version)
    form = ArchiveForm(_data_of(request))
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    if not _confirmed(request) or not form.is_valid():
        return _confirm_page(
            request,
            title=f"Archive {model.name} v{version}?",
            changes=[f"v{version}: {model_version.status} → archived"],
            note="An archived version keeps its history but can no longer be aliased, deployed or pinned.",
            action=reverse("version_archive", args=[model.name, version]),
            fields={},
            reason=reason,
            reason_field=True,
            button="Archive",
            cancel=reverse("model_detail", args=[model.name]),
            danger=True,
            blocked=model_version.status == ModelVersion.Status.ARCHIVED,
        )
    return _perform(
        request,
        lambda: registry_services.version_archive(actor=request.user, version=model_version, reason=reason),
        success=f"{model.name} v{version} is archived.",
        model=model,
    )


def _perform(request: HttpRequest, action: Callable, *, success: str, model: RegisteredModel, **forms) -> HttpResponse:
    """Run a confirmed change: back to the model with a message, or the model page with the refusal (4xx)."""
    try:
        action()
    except SERVICE_ERRORS as error:
        messages.error(request, service_error_message(error))
        # Fetched again: the failed change may have left this request's copy behind the database.
        model = registry_selectors.model_get(name=model.name)
        return _detail_page(request, model, status=service_error_status(error), **forms)
    messages.success(request, success)
    return redirect("model_detail", name=model.name)


def _detail_page(
    request: HttpRequest,
    model: RegisteredModel,
    *,
    versions: list[ModelVersion] | None = None,
    status: int = 200,
    **forms,
) -> HttpResponse:
    versions = versions if versions is not None else list(registry_selectors.version_list(model=model))
    can_manage = request.user.has_perm(MANAGE_MODELS)
    aliases = _alias_names(model)
    context = {
        "model": model,
        "rows": [(version, _input_columns(version.signature)) for version in versions],
        "history": registry_selectors.alias_history(model=model)[:ALIAS_HISTORY_SHOWN],
        "can_manage": can_manage,
        "mlflow_ui": getattr(settings, "MLFLOW_UI_URL", "http://127.0.0.1:5050").rstrip("/"),
    }
    if can_manage:
        context |= {
            "upload_form": forms.get("upload_form") or VersionUploadForm(),
            "promote_form": forms.get("promote_form") or PromoteForm(versions=versions),
            "rollback_form": (forms.get("rollback_form") or RollbackForm(aliases=aliases)) if aliases else None,
        }
    return render(request, "portal/model_detail.html", context, status=status)


def _input_columns(signature: dict | None) -> list[dict]:
    """The input columns of an MLflow signature as (name, type, required) rows; tensors show dtype and shape."""
    inputs = (signature or {}).get("inputs") if isinstance(signature, dict) else None
    rows = []
    for spec in inputs if isinstance(inputs, list) else []:
        if not isinstance(spec, dict):
            continue
        kind = str(spec.get("type") or "")
        if kind == "tensor":
            tensor = spec.get("tensor-spec") or {}
            kind = f"tensor {tensor.get('dtype', '')} {tensor.get('shape', '')}".strip()
        rows.append({"name": spec.get("name") or "—", "type": kind or "—", "required": spec.get("required", True)})
    return rows


def _alias_names(model: RegisteredModel) -> list[str]:
    return [pointer.alias for pointer in model.aliases.all()]


def _alias_target(model: RegisteredModel, alias: str) -> int | None:
    return next((pointer.version.version for pointer in model.aliases.all() if pointer.alias == alias), None)


def _label(version: int | None) -> str:
    return f"v{version}" if version is not None else "(not set)"


# --- confirmation ----------------------------------------------------------------------------------------------


def _data_of(request: HttpRequest) -> QueryDict:
    return request.POST if request.method == "POST" else request.GET


def _confirmed(request: HttpRequest) -> bool:
    return request.method == "POST" and request.POST.get("confirmed") == CONFIRMED


def _confirm_page(
    request: HttpRequest,
    *,
    title: str,
    changes: list[str],
    action: str,
    fields: dict,
    button: str,
    cancel: str,
    reason: str = "",
    note: str = "",
    reason_field: bool = False,
    danger: bool = False,
    blocked: bool = False,
) -> HttpResponse:
    context = {
        "title": title,
        "changes": changes,
        "reason": reason,
        "note": note,
        "action": action,
        "fields": fields,
        "reason_field": reason_field,
        "button": button,
        "cancel": cancel,
        "danger": danger,
        "blocked": blocked,
        "confirmed": CONFIRMED,
    }
    return render(request, "portal/model_action_confirm.html", context)


# --- servers ---------------------------------------------------------------------------------------------------


@login_required
@permission_required(VIEW_SERVERS, raise_exception=True)
@require_http_methods(["GET", "POST"])
def servers(request: HttpRequest) -> HttpResponse:
    """Model servers with the health of each replica; managers also get the form that registers one."""
    can_manage = request.user.has_perm(MANAGE_SERVING)

    def created(server):
        messages.success(request, f"Server {server.name} is registered. Probe it to see its health.")
        return redirect("servers")

    form, done, status = _create_form_flow(
        request,
        ServerCreateForm,
        can_manage,
        lambda form: serving_services.server_create(actor=request.user, **form.cleaned_data),
        created,
    )
    if done:
        return done
    rows = _servers_with_circuits(list(serving_selectors.server_list()))
    context = {"rows": rows, "form": form, "can_manage": can_manage}
    return render(request, "portal/servers.html", context, status=status)


def _servers_with_circuits(servers: list[ModelServer]) -> list[tuple]:
    """Each server with its replicas and what the balancer's circuit breaker thinks of each (one Redis round trip
    per server). The breaker can skip a replica its health probe calls up, so the page shows both.

    Without Redis the page still shows health, with the circuits as unknown, and waits for Redis only once.
    """
    rows, reachable = [], True
    for server in servers:
        replicas = list(server.replicas.all())
        states = {}
        if reachable:
            try:
                states = circuit_states(
                    schema=connection.schema_name, server_id=server.pk, urls=[replica.base_url for replica in replicas]
                )
            except RedisError:
                reachable = False
        rows.append((server, [(replica, _circuit_view(states.get(replica.base_url))) for replica in replicas]))
    return rows


def _circuit_view(state: CircuitState | None) -> dict | None:
    if state is None:
        return None
    until = datetime.fromtimestamp(state.opened_until, tz=UTC) if state.opened_until is not None else None
    return {"state": state.state, "failures": state.failures, "opened_until": until, "outstanding": state.outstanding}


@login_required
@permission_required(MANAGE_SERVING, raise_exception=True)
@require_POST
def server_probe(request: HttpRequest, server_id: int) -> HttpResponse:
    server = serving_selectors.server_get(server_id=server_id)
    try:
        server = serving_services.server_probe(actor=request.user, server=server)
    except SERVICE_ERRORS as error:
        messages.error(request, service_error_message(error))
    else:
        replicas = list(server.replicas.all())
        up = sum(1 for replica in replicas if replica.is_up)
        messages.success(request, f"Probed {server.name}: {up} of {len(replicas)} replicas up.")
    return redirect("servers")


# --- deployments -----------------------------------------------------------------------------------------------


@login_required
@permission_required(VIEW_DEPLOYMENTS, raise_exception=True)
@require_http_methods(["GET", "POST"])
def deployments(request: HttpRequest) -> HttpResponse:
    """Deployments, active first; managers also get the form that deploys a model."""
    can_manage = request.user.has_perm(MANAGE_SERVING)

    def created(deployment):
        messages.success(request, f"Deployed {_target(deployment)} on {deployment.server.name}.")
        return redirect("deployments")

    form, done, status = _create_form_flow(
        request,
        DeploymentCreateForm,
        can_manage,
        lambda form: serving_services.deployment_create(actor=request.user, **form.service_arguments()),
        created,
    )
    if done:
        return done
    rows = [
        (deployment, [_price(getattr(deployment, field)) for field in PRICE_FIELDS])
        for deployment in serving_selectors.deployment_list().order_by("-is_active", "-created", "-pk")
    ]
    context = {"rows": rows, "form": form, "can_manage": can_manage}
    return render(request, "portal/deployments.html", context, status=status)


@login_required
@permission_required(MANAGE_SERVING, raise_exception=True)
@require_http_methods(["GET", "POST"])
def deployment_deactivate(request: HttpRequest, deployment_id: int) -> HttpResponse:
    """GET asks for confirmation; the confirmed POST stops routing to the deployment."""
    deployment = serving_selectors.deployment_get(deployment_id=deployment_id)
    if not _confirmed(request):
        return _confirm_page(
            request,
            title=f"Deactivate {_target(deployment)} on {deployment.server.name}?",
            changes=[f"{_target(deployment)}: active → deactivated"],
            note="Requests for it are refused (or go to another deployment of the model) from the next one on.",
            action=reverse("deployment_deactivate", args=[deployment.pk]),
            fields={},
            button="Deactivate",
            cancel=reverse("deployments"),
            danger=True,
            blocked=not deployment.is_active,
        )
    try:
        serving_services.deployment_deactivate(actor=request.user, deployment=deployment)
    except SERVICE_ERRORS as error:
        messages.error(request, service_error_message(error))
    else:
        messages.success(request, f"{_target(deployment)} on {deployment.server.name} is deactivated.")
    return redirect("deployments")


def _price(value: Decimal) -> str:
    return f"{value.normalize():f}"


def _target(deployment) -> str:
    if deployment.alias:
        return f"{deployment.model.name}@{deployment.alias}"
    return f"{deployment.model.name} v{deployment.version.version}"
