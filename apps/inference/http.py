"""The HTTP client that talks to model servers.

One connection pool per process, so keep-alive connections to the replicas are reused across requests instead of
paying a TCP (and TLS) handshake on every prediction. Redirects are not followed (a model server that redirects is
misconfigured, and following it could send a request body somewhere else), and the environment's proxy settings
are ignored: model servers are reached directly, never through a proxy.

The JSON calls of the hot path (`upstream_send`) go to the pool's transport directly, with the headers the client
would send: the client's own layers (authentication, redirects, cookies, event hooks), none of which applies here,
cost about a quarter of a call's CPU. Streams use the client, on the same pool.
"""

from functools import cache

import httpx

MAX_CONNECTIONS = 100
MAX_KEEPALIVE = 20


@cache
def http_transport() -> httpx.HTTPTransport:
    """The process's connection pool."""
    return httpx.HTTPTransport(
        limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE)
    )


@cache
def http_client() -> httpx.Client:
    """The process's client on that pool; timeouts are given per request, from the deployment's settings."""
    return httpx.Client(transport=http_transport(), follow_redirects=False, trust_env=False)


@cache
def _client_headers() -> tuple[tuple[str, str], ...]:
    return tuple(http_client().headers.items())


def upstream_send(method: str, url: str, *, json: object, headers: dict, timeout_seconds: float) -> httpx.Response:
    """One request with a JSON body, read whole: what `http_client().request(...)` does, for less CPU.

    Raises httpx's exceptions, as the client would, reading the body included.
    """
    overridden = {name.lower() for name in headers}
    request = httpx.Request(
        method,
        url,
        json=json,
        headers=[*(item for item in _client_headers() if item[0] not in overridden), *headers.items()],
        extensions={"timeout": httpx.Timeout(timeout_seconds).as_dict()},
    )
    response = http_transport().handle_request(request)
    try:
        response.read()
    finally:
        response.close()
    response.request = request
    return response
