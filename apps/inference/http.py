"""The HTTP client that talks to model servers.

One client per process: it holds the connection pool, so keep-alive connections to the replicas are reused
across requests instead of paying a TCP (and TLS) handshake on every prediction. Redirects are not followed
(a model server that redirects is misconfigured, and following it could send a request body somewhere else),
and the environment's proxy settings are ignored: model servers are reached directly, never through a proxy.
"""

from functools import cache

import httpx

MAX_CONNECTIONS = 100
MAX_KEEPALIVE = 20


@cache
def http_client() -> httpx.Client:
    """The process's pooled client; timeouts are given per request, from the deployment's settings."""
    return httpx.Client(
        limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE),
        follow_redirects=False,
        trust_env=False,
    )
