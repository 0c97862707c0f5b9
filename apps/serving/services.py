"""Writes on model servers and deployments.

Every write checks `serving.manage_serving`, names its actor in the audit log, and drops the cached routes it can
move, once at once and once more on commit, so no request re-caches the old state in between.
"""

import ipaddress
import re
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from auditlog.context import set_actor
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.utils import timezone

from apps.accounts.models import User
from apps.registry.models import ModelVersion, RegisteredModel
from apps.serving.health import servers_probe
from apps.serving.models import Deployment, ModelServer, ServerReplica
from apps.serving.secrets import secret_encrypt
from apps.serving.selectors import routes_forget, routes_forget_for_server

SERVER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
GPU_POOL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_RE = re.compile(rf"^{_DNS_LABEL}(?:\.{_DNS_LABEL})*$")
MAX_REPLICAS = 32
MAX_TIMEOUT_SECONDS = 600
MAX_CONCURRENCY = 1024
MAX_HEADER_VALUE = 4096
MAX_PRICE = Decimal("999999.999999")
PRICE_FIELDS = ("price_per_request", "price_per_1k_tokens", "price_per_gpu_second")


def _require_manager(actor: User) -> None:
    if not actor.has_perm("serving.manage_serving"):
        raise PermissionDenied("Your role cannot manage model servers and deployments.")


# --- servers ---------------------------------------------------------------------------------------------------


def _clean_server_name(name: str, *, server: ModelServer | None = None) -> str:
    name = name.strip()
    if not SERVER_NAME_RE.match(name):
        raise ValidationError(
            "Use 1 to 63 lowercase letters, digits, dots, hyphens and underscores.", code="invalid_server_name"
        )
    taken = ModelServer.objects.filter(name=name)
    if server is not None:
        taken = taken.exclude(pk=server.pk)
    if taken.exists():
        raise ValidationError(f"A server named {name!r} exists already.", code="name_taken")
    return name


def _clean_protocol(protocol: str) -> str:
    if protocol not in ModelServer.Protocol.values:
        raise ValidationError(
            f"The protocol is one of {', '.join(ModelServer.Protocol.values)}.", code="invalid_protocol"
        )
    return protocol


def _clean_gpu_pool(gpu_pool: str) -> str:
    if not GPU_POOL_RE.match(gpu_pool):
        raise ValidationError(
            "The GPU pool is a slug: 1 to 50 lowercase letters, digits, hyphens and underscores.",
            code="invalid_gpu_pool",
        )
    return gpu_pool


def _clean_bounded(value: int, *, low: int, high: int, what: str, code: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"The {what} is {low} to {high}.", code=code)
    return value


def _clean_timeout(value: int) -> int:
    return _clean_bounded(value, low=1, high=MAX_TIMEOUT_SECONDS, what="request timeout", code="invalid_timeout")


def _clean_concurrency(value: int) -> int:
    return _clean_bounded(value, low=1, high=MAX_CONCURRENCY, what="concurrency", code="invalid_concurrency")


def _clean_accelerator(value: str) -> str:
    value = value.strip()
    if len(value) > 100:
        raise ValidationError("The accelerator label is at most 100 characters.", code="invalid_accelerator")
    return value


def _clean_replica_url(url: str) -> str:
    url = str(url).strip().rstrip("/")
    invalid = ValidationError(f"{url!r} is not an http:// or https:// address.", code="invalid_replica_url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port out of range)
    except ValueError:
        raise invalid from None
    host = parts.hostname or ""
    if (
        parts.scheme not in ("http", "https")
        or not host
        or parts.username is not None
        or parts.query
        or parts.fragment
        or len(url) > 500
        or not (HOST_RE.match(host) or _is_ip(host))
    ):
        raise invalid
    return url


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _clean_replica_urls(urls: list[str]) -> list[str]:
    cleaned = list(dict.fromkeys(_clean_replica_url(url) for url in urls))
    if not cleaned:
        raise ValidationError("A server needs at least one replica URL.", code="no_replicas")
    if len(cleaned) > MAX_REPLICAS:
        raise ValidationError(f"A server has at most {MAX_REPLICAS} replicas.", code="too_many_replicas")
    return cleaned


def _clean_auth_header(name: str, value: str | None, current_encrypted: str) -> tuple[str, str]:
    """(header name, encrypted value). `value` None keeps the stored value; an empty value or name clears both."""
    name = name.strip()
    if value == "" or not name:
        if value:
            raise ValidationError("A header value needs a header name.", code="invalid_auth_header")
        return "", ""
    if not HEADER_NAME_RE.match(name):
        raise ValidationError(f"{name!r} is not an HTTP header name.", code="invalid_auth_header")
    if value is None:
        if not current_encrypted:
            raise ValidationError("The auth header needs a value.", code="invalid_auth_header")
        return name, current_encrypted
    if len(value) > MAX_HEADER_VALUE or any(char in value for char in "\r\n\0"):
        raise ValidationError("The auth header value is not a valid header value.", code="invalid_auth_header")
    return name, secret_encrypt(value)


def server_create(
    *,
    actor: User,
    name: str,
    protocol: str,
    gpu_pool: str,
    replica_urls: list[str],
    accelerator: str = "",
    request_timeout_seconds: int = 30,
    max_concurrency: int = 4,
    auth_header_name: str = "",
    auth_header_value: str = "",
) -> ModelServer:
    """Register a model server and its replicas; the auth header's value is encrypted before it is stored."""
    _require_manager(actor)
    header_name, header_encrypted = _clean_auth_header(auth_header_name, auth_header_value or None, "")
    fields = {
        "name": _clean_server_name(name),
        "protocol": _clean_protocol(protocol),
        "gpu_pool": _clean_gpu_pool(gpu_pool),
        "accelerator": _clean_accelerator(accelerator),
        "request_timeout_seconds": _clean_timeout(request_timeout_seconds),
        "max_concurrency": _clean_concurrency(max_concurrency),
        "auth_header_name": header_name,
        "auth_header_value_encrypted": header_encrypted,
        "auth_header_changed_at": timezone.now() if header_encrypted else None,
    }
    urls = _clean_replica_urls(replica_urls)
    with transaction.atomic(), set_actor(actor):
        try:
            with transaction.atomic():
                server = ModelServer.objects.create(created_by=actor, **fields)
        except IntegrityError:
            raise ValidationError(f"A server named {fields['name']!r} exists already.", code="name_taken") from None
        for url in urls:
            ServerReplica.objects.create(server=server, base_url=url)
    return server


def server_update(*, actor: User, server: ModelServer, **changes) -> ModelServer:
    """Change a server's settings. `replica_urls` replaces the replicas as a set (kept ones keep their health);
    `auth_header_value` sets the secret, an empty one clears the header, leaving it out keeps it."""
    _require_manager(actor)
    cleaners = {
        "name": lambda value: _clean_server_name(value, server=server),
        "protocol": _clean_protocol,
        "gpu_pool": _clean_gpu_pool,
        "accelerator": _clean_accelerator,
        "request_timeout_seconds": _clean_timeout,
        "max_concurrency": _clean_concurrency,
    }
    unknown = set(changes) - set(cleaners) - {"replica_urls", "auth_header_name", "auth_header_value"}
    if unknown:
        raise TypeError(f"server_update() got unexpected fields: {', '.join(sorted(unknown))}")
    urls = _clean_replica_urls(changes.pop("replica_urls")) if "replica_urls" in changes else None
    header_changes = {key: changes.pop(key) for key in ("auth_header_name", "auth_header_value") if key in changes}
    cleaned = {field: cleaners[field](value) for field, value in changes.items()}
    with transaction.atomic(), set_actor(actor):
        server = ModelServer.objects.select_for_update().get(pk=server.pk)
        if header_changes:
            name = header_changes.get("auth_header_name", server.auth_header_name)
            value = header_changes.get("auth_header_value")
            if "auth_header_name" in header_changes and not name:
                value = ""
            name, encrypted = _clean_auth_header(name, value, server.auth_header_value_encrypted)
            if encrypted != server.auth_header_value_encrypted:
                cleaned["auth_header_changed_at"] = timezone.now()
            cleaned.update(auth_header_name=name, auth_header_value_encrypted=encrypted)
        protocol_changed = cleaned.get("protocol", server.protocol) != server.protocol
        for field, value in cleaned.items():
            setattr(server, field, value)
        server.save(update_fields=[*cleaned, "updated"])
        if urls is not None:
            _replicas_replace(server, urls)
        if protocol_changed:
            server.replicas.update(is_up=None, status_changed_at=timezone.now(), last_error="")
        transaction.on_commit(lambda: routes_forget_for_server(server=server))
    routes_forget_for_server(server=server)
    return server


def _replicas_replace(server: ModelServer, urls: list[str]) -> None:
    for replica in server.replicas.exclude(base_url__in=urls):
        replica.delete()
    existing = set(server.replicas.values_list("base_url", flat=True))
    for url in urls:
        if url not in existing:
            ServerReplica.objects.create(server=server, base_url=url)


def server_delete(*, actor: User, server: ModelServer) -> None:
    """Remove a server nobody deploys to. Deployments, also deactivated ones, keep their server: they are the
    record of what was served where, so a server that ever served stays."""
    _require_manager(actor)
    with transaction.atomic(), set_actor(actor):
        server = ModelServer.objects.select_for_update().get(pk=server.pk)
        if server.deployments.filter(is_active=True).exists():
            raise ValidationError("An active deployment uses this server; deactivate it first.", code="server_in_use")
        if server.deployments.exists():
            raise ValidationError(
                "Past deployments refer to this server; it stays as their record.", code="server_has_deployments"
            )
        try:
            server.delete()
        except ProtectedError:
            raise ValidationError("A deployment uses this server.", code="server_in_use") from None


def server_probe(*, actor: User, server: ModelServer) -> ModelServer:
    """Probe the server's replicas now and return it with their fresh state."""
    _require_manager(actor)
    servers_probe(server=server)
    return ModelServer.objects.prefetch_related("replicas").get(pk=server.pk)


# --- deployments -----------------------------------------------------------------------------------------------


def _check_version(model: RegisteredModel, version: ModelVersion, *, what: str) -> None:
    if version.model_id != model.pk:
        raise ValidationError(f"The {what} is a version of another model.", code="invalid_version")
    if version.status == ModelVersion.Status.ARCHIVED:
        raise ValidationError(f"The {what} (v{version.version}) is archived.", code="version_archived")


def _check_target(model: RegisteredModel, alias: str, version: ModelVersion | None) -> None:
    if bool(alias) == (version is not None):
        raise ValidationError("Deploy either an alias or a version, not both.", code="alias_or_version")
    if alias and (not ALIAS_RE.match(alias) or re.fullmatch(r"v\d+", alias) or alias == "latest"):
        raise ValidationError(
            "An alias is 1 to 63 lowercase letters, digits, '-' and '_', starting with a letter "
            "(not 'latest' nor 'v<number>').",
            code="invalid_alias",
        )
    if version is not None:
        _check_version(model, version, what="version")


def _check_canary(
    model: RegisteredModel, version: ModelVersion | None, canary_version: ModelVersion | None, canary_percent: int
) -> None:
    if canary_version is None:
        if canary_percent:
            raise ValidationError("A canary share needs a canary version.", code="invalid_canary")
        return
    if isinstance(canary_percent, bool) or not isinstance(canary_percent, int) or not 1 <= canary_percent <= 99:
        raise ValidationError("The canary takes 1 to 99 percent of the traffic.", code="invalid_canary")
    _check_version(model, canary_version, what="canary version")
    if version is not None and canary_version.pk == version.pk:
        raise ValidationError("The canary is the deployed version itself.", code="invalid_canary")


def _clean_price(value) -> Decimal:
    try:
        price = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValidationError(f"{value!r} is not a price.", code="invalid_price") from None
    if not price.is_finite() or price < 0 or price > MAX_PRICE or price.as_tuple().exponent < -6:
        raise ValidationError(f"A price is 0 to {MAX_PRICE}, with at most 6 decimal places.", code="invalid_price")
    return price


def _forget_model_routes(model: RegisteredModel) -> None:
    routes_forget(model=model)
    transaction.on_commit(lambda: routes_forget(model=model))


def _lock_server(server: ModelServer) -> ModelServer:
    locked = ModelServer.objects.select_for_update().filter(pk=server.pk).first()
    if locked is None:
        raise ValidationError("No such server.", code="unknown_server")
    return locked


def deployment_create(
    *,
    actor: User,
    model: RegisteredModel,
    server: ModelServer,
    alias: str = "",
    version: ModelVersion | None = None,
    canary_version: ModelVersion | None = None,
    canary_percent: int = 0,
    price_per_request: Decimal | int | str = 0,
    price_per_1k_tokens: Decimal | int | str = 0,
    price_per_gpu_second: Decimal | int | str = 0,
) -> Deployment:
    """Serve `model@alias` (follows promotions and rollbacks) or one fixed `version` of it on `server`.
    One active deployment per alias and per version of a model."""
    _require_manager(actor)
    alias = alias.strip()
    _check_target(model, alias, version)
    _check_canary(model, version, canary_version, canary_percent)
    prices = {
        "price_per_request": _clean_price(price_per_request),
        "price_per_1k_tokens": _clean_price(price_per_1k_tokens),
        "price_per_gpu_second": _clean_price(price_per_gpu_second),
    }
    duplicate = ValidationError(
        f"{model.name}{f'@{alias}' if alias else f' v{version.version}' if version else ''} is deployed already; "
        "change or deactivate that deployment.",
        code="deployment_exists",
    )
    with transaction.atomic(), set_actor(actor):
        server = _lock_server(server)
        active = Deployment.objects.filter(model=model, is_active=True)
        if active.filter(alias=alias, version=version).exists():
            raise duplicate
        try:
            with transaction.atomic():
                deployment = Deployment.objects.create(
                    model=model,
                    alias=alias,
                    version=version,
                    server=server,
                    canary_version=canary_version,
                    canary_percent=canary_percent if canary_version else 0,
                    created_by=actor,
                    **prices,
                )
        except IntegrityError:
            raise duplicate from None
        _forget_model_routes(model)
    routes_forget(model=model)
    return deployment


def deployment_update(*, actor: User, deployment: Deployment, **changes) -> Deployment:
    """Move a deployment to another server, change its canary or its prices. What it serves (alias or version)
    does not change: deploy anew and deactivate this one for that."""
    _require_manager(actor)
    unknown = set(changes) - {"server", "canary_version", "canary_percent", *PRICE_FIELDS}
    if unknown:
        raise TypeError(f"deployment_update() got unexpected fields: {', '.join(sorted(unknown))}")
    with transaction.atomic(), set_actor(actor):
        deployment = Deployment.objects.select_for_update().select_related("model").get(pk=deployment.pk)
        if not deployment.is_active:
            raise ValidationError("A deactivated deployment cannot be changed.", code="deployment_inactive")
        cleaned = {field: _clean_price(changes[field]) for field in PRICE_FIELDS if field in changes}
        if "server" in changes:
            cleaned["server"] = _lock_server(changes["server"])
        if "canary_version" in changes or "canary_percent" in changes:
            canary = changes.get("canary_version", deployment.canary_version)
            percent = changes.get("canary_percent", deployment.canary_percent if canary else 0)
            _check_canary(deployment.model, deployment.version, canary, percent)
            cleaned.update(canary_version=canary, canary_percent=percent if canary else 0)
        for field, value in cleaned.items():
            setattr(deployment, field, value)
        deployment.save(update_fields=[*cleaned, "updated"])
        _forget_model_routes(deployment.model)
    routes_forget(model=deployment.model)
    return deployment


def deployment_deactivate(*, actor: User, deployment: Deployment) -> Deployment:
    """Stop routing to this deployment from the next request on; the row stays as the record of what was served."""
    _require_manager(actor)
    with transaction.atomic(), set_actor(actor):
        deployment = Deployment.objects.select_for_update().select_related("model").get(pk=deployment.pk)
        if deployment.is_active:
            deployment.is_active = False
            deployment.save(update_fields=["is_active", "updated"])
        _forget_model_routes(deployment.model)
    routes_forget(model=deployment.model)
    return deployment
