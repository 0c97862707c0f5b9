"""What every protocol adapter takes, returns and raises, so the worker handles all model servers alike.

An adapter turns a checked request (`ParsedInput`) into one HTTP call to one replica and the answer back into
plain Python data. Failures are sorted into a few kinds the caller acts on differently: a connection that
failed before anything was sent may be retried on another replica; a timeout or a request the server
rejected may not.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from apps.inference.http import upstream_send
from apps.inference.payloads import ParsedInput

MESSAGE_LIMIT = 500
# An unindented `Name: message` line, as Python prints the exception that ends a traceback.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning|Iteration): ")


@dataclass(frozen=True)
class UpstreamRequest:
    """One call to one replica: where, which model, what, and how long to wait.

    `operation` is `predict` (with `parsed`, the checked MLflow input) or one of the OpenAI operations
    (`chat`, `completions`, `embeddings`, with the client's `payload`).
    """

    base_url: str
    model_name: str
    version: int | None
    parsed: ParsedInput | None
    timeout_seconds: float
    headers: dict = field(default_factory=dict)
    operation: str = "predict"
    payload: dict | None = None


@dataclass(frozen=True)
class UpstreamAnswer:
    """The model's output as plain data, with what the compliance record and billing need."""

    output: object
    status_code: int
    upstream_ms: float
    replica: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class UpstreamError(Exception):
    """A model server call that gave no usable answer, with the API error code and HTTP status to report."""

    def __init__(self, code: str, message: str, status_code: int):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status_code = status_code


class UpstreamTimeout(UpstreamError):
    """The replica did not answer in time; the request may have run, so it is not retried."""

    def __init__(self, message: str = "The model server did not answer in time."):
        super().__init__("upstream_timeout", message, 504)


class UpstreamUnavailable(UpstreamError):
    """The replica could not be reached. `sent` is False when nothing was sent, so another replica may be tried."""

    def __init__(self, message: str = "The model server is unavailable.", *, sent: bool):
        super().__init__("model_unavailable", message, 503)
        self.sent = sent


class UpstreamRejected(UpstreamError):
    """The model server refused the request (4xx); its status and message are passed on to the client."""

    def __init__(self, message: str, status_code: int):
        super().__init__("upstream_rejected", message, status_code)


class UpstreamFailed(UpstreamError):
    """The model server failed (5xx) or answered something unreadable."""

    def __init__(self, message: str = "The model server failed."):
        super().__init__("upstream_error", message, 502)


class ProtocolAdapter(ABC):
    """One model server protocol: how to ask a replica for a prediction and where to check its health."""

    name: str
    health_path: str

    @abstractmethod
    def predict(self, request: UpstreamRequest) -> UpstreamAnswer:
        """Call the replica once; raise an `UpstreamError` subclass for anything but a usable answer."""

    def stream(self, request: UpstreamRequest) -> Iterator[dict]:
        """Call the replica once and yield its answer chunk by chunk, for protocols that stream."""
        raise UpstreamRejected(f"The {self.name} protocol does not stream.", 400)


def upstream_post(request: UpstreamRequest, path: str, body: dict) -> tuple[object, int, float]:
    """POST JSON to the replica and return (decoded body, status, ms), mapping every failure to an `UpstreamError`.

    Shared by the JSON protocols so they sort transport errors and HTTP statuses the same way.
    """
    url = request.base_url.rstrip("/") + path
    started = time.perf_counter()
    try:
        response = upstream_send(
            "POST", url, json=body, headers=request.headers, timeout_seconds=request.timeout_seconds
        )
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise UpstreamUnavailable(f"Could not connect to the model server: {exc}", sent=False) from exc
    except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as exc:
        raise UpstreamTimeout() from exc
    except httpx.TransportError as exc:
        raise UpstreamUnavailable(f"The model server connection failed: {exc}", sent=True) from exc
    elapsed_ms = (time.perf_counter() - started) * 1000
    status = response.status_code
    upstream_status_check(response)
    try:
        decoded = response.json()
    except ValueError as exc:
        raise UpstreamFailed("The model server's answer is not JSON.") from exc
    return decoded, status, elapsed_ms


def upstream_status_check(response: httpx.Response) -> None:
    """Raise the `UpstreamError` an HTTP status stands for: 4xx rejected, 5xx failed, anything but 200 unusable."""
    status = response.status_code
    if status >= 500:
        # Some servers (uvicorn behind MLServer) drop the connection after an error without saying so; reusing it
        # would fail the next, unrelated request with a reset and count against a healthy replica.
        _connection_discard(response)
    if 400 <= status < 500:
        raise UpstreamRejected(_error_message(response), status)
    if status >= 500:
        raise UpstreamFailed(f"The model server failed ({status}): {_error_message(response)}")
    if status != 200:
        raise UpstreamFailed(f"The model server answered {status}.")


def _connection_discard(response: httpx.Response) -> None:
    stream = response.extensions.get("network_stream")
    if stream is not None:
        stream.close()


def _error_message(response: httpx.Response) -> str:
    """The server's own message when it sent one (`message` for MLflow, `error` for Triton and MLServer).

    A server in debug mode may answer with a Python traceback: only its last line, the exception, is passed
    on, never the server's file paths and code.
    """
    try:
        decoded = response.json()
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        for key in ("message", "error"):
            if isinstance(decoded.get(key), str) and decoded[key]:
                return _without_traceback(decoded[key])[:MESSAGE_LIMIT]
    return _without_traceback(response.text)[:MESSAGE_LIMIT] or f"HTTP {response.status_code}"


def _without_traceback(text: str) -> str:
    """The exception at the end of a traceback (`ValueError: ...` and any lines of its message after it)."""
    if "Traceback (most recent call last)" not in text:
        return text
    lines = text.strip().splitlines()
    start = max((index for index, line in enumerate(lines) if _EXCEPTION_LINE.match(line)), default=len(lines) - 1)
    return " ".join(line.strip() for line in lines[start:] if line.strip())
