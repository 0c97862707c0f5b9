"""Reads on servers and deployments, and the hot-path routing decision (Redis first).

A route says where a request for `model@alias` or `model` version N goes: which deployment, server, queue and
replicas, with the version's run and signature and the prices. It is cached per tenant for `ROUTE_CACHE_SECONDS`
and dropped by `routes_forget` on every change that could move it: deployments, aliases, archived versions,
server settings, and replicas going up or down.
"""

import pickle
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal
from functools import cache

from django.db import connection
from django.db.models import Case, IntegerField, QuerySet, Value, When
from django.shortcuts import get_object_or_404

from apps.registry.models import ModelAlias, ModelVersion, RegisteredModel
from apps.serving.models import Deployment, ModelServer
from apps.serving.secrets import secret_decrypt
from config.redis import cached_object_get, get_redis

DEFAULT_ALIAS = "champion"
ROUTE_CACHE_SECONDS = 300
NO_ROUTE_CACHE_SECONDS = 30
_GENERATION_SECONDS = 24 * 3600
# Names that can be part of a Redis key without colliding with another model's or alias's key.
_KEY_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


@dataclass(frozen=True)
class Prices:
    per_request: Decimal
    per_1k_tokens: Decimal
    per_gpu_second: Decimal


@dataclass(frozen=True)
class Route:
    """Everything inference needs to dispatch a request, without a database query.

    `alias` is None for a request by version. `replica_urls` holds the replicas not known to be down (possibly
    none: the model is deployed but nothing answers). A canary applies only to requests by alias.
    """

    model_name: str
    model_id: int
    mlflow_name: str
    alias: str | None
    version: int
    run_id: str
    deployment_id: int
    server_id: int
    protocol: str
    queue_name: str
    replica_urls: tuple[str, ...]
    timeout_seconds: int
    canary_version: int | None
    canary_percent: int
    canary_run_id: str
    prices: Prices
    signature: dict | None
    canary_signature: dict | None = None
    # Whether the server wants an auth header; its value never enters the cached route.
    auth_header: bool = False


def _route_key(schema: str, model_name: str, label: str) -> str:
    return f"route:{schema}:{model_name}:{label}"


def _routes_set_key(schema: str, model_name: str) -> str:
    return f"routes:{schema}:{model_name}"


def _generation_key(schema: str, model_name: str) -> str:
    return f"routes:{schema}:{model_name}:generation"


# Store a freshly built route only if no `routes_forget` ran since the build began: otherwise a request that read
# the database just before a change committed could cache the old route after the change had dropped it.
_STORE = """
local generation = redis.call('GET', KEYS[1]) or ''
if generation ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
redis.call('SADD', KEYS[3], KEYS[2])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
return 1
"""

_FORGET = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
local keys = redis.call('SMEMBERS', KEYS[2])
for i = 1, #keys, 500 do
  redis.call('DEL', unpack(keys, i, math.min(i + 499, #keys)))
end
redis.call('DEL', KEYS[2])
return #keys
"""


@cache
def _scripts():
    client = get_redis()
    return client.register_script(_STORE), client.register_script(_FORGET)


def route_resolve(*, model_name: str, alias: str | None = None, version: int | None = None) -> Route | None:
    """Where a request for `model_name` goes in the current tenant, or None when nothing serves it.

    By `version` when given (a key's pin wins over an alias): the active deployment of that version, else the
    deployment of one of the model's aliases (`champion` first), so a pinned key still reaches the server that
    serves the model. Otherwise by `alias` (default `champion`): the deployment of that alias, else the
    deployment of the version the alias points to. Archived versions are never routed to.
    With the route cached, this costs one Redis read and no database query.
    """
    alias = None if version is not None else (alias or DEFAULT_ALIAS)
    label = f"v{version}" if version is not None else alias
    if not _KEY_SAFE.match(model_name) or not _KEY_SAFE.match(label):
        return None
    schema = connection.schema_name
    key = _route_key(schema, model_name, label)
    entry = cached_object_get(key)
    if entry is None:
        entry = _route_build_and_store(schema, key, model_name=model_name, alias=alias, version=version)
    return entry or None


def _route_build_and_store(schema: str, key: str, *, model_name: str, alias: str | None, version: int | None):
    generation = get_redis().get(_generation_key(schema, model_name)) or b""
    route = _route_build(model_name=model_name, alias=alias, version=version)
    store, _ = _scripts()
    store(
        keys=[_generation_key(schema, model_name), key, _routes_set_key(schema, model_name)],
        args=[
            generation,
            pickle.dumps(route or False, protocol=pickle.HIGHEST_PROTOCOL),
            ROUTE_CACHE_SECONDS if route else NO_ROUTE_CACHE_SECONDS,
            ROUTE_CACHE_SECONDS,
        ],
    )
    return route


def routes_forget(*, model: RegisteredModel) -> None:
    """Drop every cached route of `model` in the current tenant: the next `route_resolve` reads the database.

    Call it immediately and again on commit after any change that can move a route (the registry's alias moves
    and archives included).
    """
    _routes_forget_names(connection.schema_name, [model.name])


def routes_forget_for_server(*, server: ModelServer) -> None:
    """A server's settings or replicas changed: drop the routes of every model it serves."""
    names = Deployment.objects.filter(server=server, is_active=True).values_list("model__name", flat=True)
    _routes_forget_names(connection.schema_name, set(names))


def _routes_forget_names(schema: str, names) -> None:
    _, forget = _scripts()
    for name in names:
        forget(
            keys=[_generation_key(schema, name), _routes_set_key(schema, name)],
            args=[uuid.uuid4().hex, _GENERATION_SECONDS],
        )


def _route_build(*, model_name: str, alias: str | None, version: int | None) -> Route | None:
    model = RegisteredModel.objects.filter(name=model_name).first()
    if model is None:
        return None
    active = Deployment.objects.filter(model=model, is_active=True).select_related("server", "canary_version")
    if version is not None:
        target = ModelVersion.objects.filter(model=model, version=version).first()
        if target is None or target.status == ModelVersion.Status.ARCHIVED:
            return None
        aliased = active.exclude(alias="").annotate(
            default_first=Case(When(alias=DEFAULT_ALIAS, then=Value(0)), default=Value(1), output_field=IntegerField())
        )
        deployment = active.filter(version=target).first() or aliased.order_by("default_first", "alias").first()
        return _route(model, deployment, target, alias=None) if deployment else None
    pointer = ModelAlias.objects.filter(model=model, alias=alias).select_related("version").first()
    if pointer is None or pointer.version.status == ModelVersion.Status.ARCHIVED:
        return None
    target = pointer.version
    deployment = active.filter(alias=alias).first() or active.filter(version=target).first()
    return _route(model, deployment, target, alias=alias) if deployment else None


def _route(model: RegisteredModel, deployment: Deployment, target: ModelVersion, *, alias: str | None) -> Route:
    server = deployment.server
    canary = deployment.canary_version
    if (
        alias is None
        or canary is None
        or canary.pk == target.pk
        or canary.status == ModelVersion.Status.ARCHIVED
        or not deployment.canary_percent
    ):
        canary = None
    replicas = server.replicas.exclude(is_up=False).order_by("base_url").values_list("base_url", flat=True)
    return Route(
        model_name=model.name,
        model_id=model.pk,
        mlflow_name=model.mlflow_name,
        alias=alias,
        version=target.version,
        run_id=target.run_id,
        deployment_id=deployment.pk,
        server_id=server.pk,
        protocol=server.protocol,
        queue_name=server.queue_name,
        replica_urls=tuple(replicas),
        timeout_seconds=server.request_timeout_seconds,
        canary_version=canary.version if canary else None,
        canary_percent=deployment.canary_percent if canary else 0,
        canary_run_id=canary.run_id if canary else "",
        prices=Prices(
            per_request=deployment.price_per_request,
            per_1k_tokens=deployment.price_per_1k_tokens,
            per_gpu_second=deployment.price_per_gpu_second,
        ),
        signature=target.signature,
        canary_signature=canary.signature if canary else None,
        auth_header=server.has_auth_header,
    )


def server_auth_headers(server: ModelServer) -> dict[str, str]:
    """The header the portal sends to `server`, decrypted; empty when none is set (or it cannot be read)."""
    if not server.has_auth_header:
        return {}
    value = secret_decrypt(server.auth_header_value_encrypted)
    return {server.auth_header_name: value} if value is not None else {}


def server_auth_headers_by_id(*, server_id: int) -> dict[str, str]:
    """`server_auth_headers` for a server known by id (a worker holding only a route); empty if it is gone."""
    server = ModelServer.objects.filter(pk=server_id).first()
    return server_auth_headers(server) if server is not None else {}


def openai_model_list() -> list[tuple[str, object]]:
    """(name, created) of the models with an active deployment on an OpenAI-protocol server, by name."""
    rows = (
        Deployment.objects.filter(is_active=True, server__protocol=ModelServer.Protocol.OPENAI)
        .values_list("model__name", "model__created")
        .distinct()
        .order_by("model__name")
    )
    return list(rows)


def server_list() -> QuerySet[ModelServer]:
    return ModelServer.objects.select_related("created_by").prefetch_related("replicas").order_by("name")


def server_get(*, server_id: int) -> ModelServer:
    """Servers exist only in the current tenant's schema: another tenant's id is simply not found."""
    return get_object_or_404(server_list(), pk=server_id)


def deployment_list(*, model_name: str | None = None, active: bool | None = None) -> QuerySet[Deployment]:
    deployments = Deployment.objects.select_related(
        "model", "version", "canary_version", "server", "created_by"
    ).order_by("-created", "-pk")
    if model_name is not None:
        deployments = deployments.filter(model__name=model_name)
    if active is not None:
        deployments = deployments.filter(is_active=active)
    return deployments


def deployment_get(*, deployment_id: int) -> Deployment:
    return get_object_or_404(deployment_list(), pk=deployment_id)
