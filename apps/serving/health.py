"""Health probes of model server replicas, by each protocol's own readiness endpoint.

A replica is up when it answers 2xx. The fallback path is tried only when the first one does not exist there
(404, 405, 501): a server that says "not ready" on its readiness endpoint is down, whatever else it answers.
Replicas that go down (or come back) drop the routes of every model their server serves, so routing skips them
from the next request on.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from django.utils import timezone

from apps.serving.models import ModelServer, ServerReplica
from apps.serving.selectors import routes_forget_for_server, server_auth_headers

PROBE_PATHS: dict[str, tuple[str, ...]] = {
    ModelServer.Protocol.MLFLOW: ("/ping", "/health"),
    ModelServer.Protocol.OPENAI: ("/v1/models", "/health"),
    ModelServer.Protocol.KSERVE_V2: ("/v2/health/ready",),
}
PROBE_TIMEOUT_SECONDS = 2.0
MAX_PARALLEL_PROBES = 16
_NOT_THERE = frozenset({404, 405, 501})
_clients: dict[int, httpx.Client] = {}


def _client() -> httpx.Client:
    """One pooled client per process (a forked worker builds its own: sockets are not shared across a fork)."""
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        # No proxies from the environment and no redirects: a probe talks to the address it was given, only.
        client = _clients[pid] = httpx.Client(
            timeout=httpx.Timeout(PROBE_TIMEOUT_SECONDS), follow_redirects=False, trust_env=False
        )
    return client


@dataclass(frozen=True)
class ProbeResult:
    up: bool
    error: str = ""


def _check(base_url: str, protocol: str, headers: dict[str, str]) -> ProbeResult:
    paths = PROBE_PATHS[protocol]
    for index, path in enumerate(paths):
        try:
            # Streamed and never read: only the status matters, whatever size the body is.
            with _client().stream("GET", base_url.rstrip("/") + path, headers=headers) as response:
                status = response.status_code
        except httpx.TimeoutException:
            return ProbeResult(False, f"timed out after {PROBE_TIMEOUT_SECONDS:g} s")
        except httpx.HTTPError as exc:
            return ProbeResult(False, f"{type(exc).__name__}: {exc}"[:200])
        if 200 <= status < 300:
            return ProbeResult(True)
        if status not in _NOT_THERE or index == len(paths) - 1:
            return ProbeResult(False, f"HTTP {status} from {path}")
    return ProbeResult(False, "no probe path")


def replica_probe(*, replica: ServerReplica) -> bool:
    """Whether the replica answers its protocol's health endpoint now (nothing is recorded)."""
    server = replica.server
    return _check(replica.base_url, server.protocol, server_auth_headers(server)).up


def servers_probe(*, server: ModelServer | None = None) -> list[ServerReplica]:
    """Probe every replica of the current tenant (or of `server`) in parallel and record what was found.

    `status_changed_at` moves only when `is_up` changes, and then the routes through that server are dropped.
    Health is not audited: it is nobody's action, and it would write an entry per replica every probe.
    """
    replicas = list(ServerReplica.objects.select_related("server").filter(**({"server": server} if server else {})))
    if not replicas:
        return []
    headers = {replica.server_id: server_auth_headers(replica.server) for replica in replicas}
    jobs = [(replica.base_url, replica.server.protocol, headers[replica.server_id]) for replica in replicas]
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_PROBES, len(jobs))) as pool:
        results = list(pool.map(lambda job: _check(*job), jobs))
    now = timezone.now()
    changed: dict[int, ModelServer] = {}
    for replica, result in zip(replicas, results, strict=True):
        if replica.is_up is not result.up:
            replica.status_changed_at = now
            changed[replica.server_id] = replica.server
        replica.is_up, replica.last_checked_at, replica.last_error = result.up, now, result.error
    ServerReplica.objects.bulk_update(replicas, ["is_up", "status_changed_at", "last_checked_at", "last_error"])
    for changed_server in changed.values():
        routes_forget_for_server(server=changed_server)
    return replicas
