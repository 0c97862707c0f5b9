"""The request id every response carries (and every record and log line will): the client's, when sane."""

import re
import uuid
from contextvars import ContextVar

_WELL_FORMED = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")
current_request_id: ContextVar[str] = ContextVar("request_id", default="")


def request_id_from_header(value: str | None) -> str:
    if value and _WELL_FORMED.match(value):
        return value
    return uuid.uuid4().hex


def request_id_of(request) -> str:
    return getattr(request, "request_id", "") or current_request_id.get()
