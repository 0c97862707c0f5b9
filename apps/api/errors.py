"""One error shape for the whole API: {"error": {"code", "message", "request_id"}} with the right status."""

import logging

from django.core.exceptions import PermissionDenied, RequestDataTooBig, ValidationError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from apps.api.request_id import request_id_of

logger = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    """A domain error with a stable code, raised by services and views alike."""

    def __init__(self, message: str, *, code: str, status_code: int = 400, headers: dict | None = None):
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.error_code = code
        self.headers = headers or {}


class UnprocessableEntity(ApiError):
    def __init__(self, message: str, *, code: str = "validation_error", fields: dict | None = None):
        super().__init__(message, code=code, status_code=422)
        self.fields = fields or {}


def error_body(code: str, message: str, request_id: str, **extra) -> dict:
    return {"error": {"code": code, "message": message, "request_id": request_id, **extra}}


OPENAI_PREFIX = "/v1/"


def _openai_type(status_code: int, code: str) -> str:
    """OpenAI's error `type` for a status: what its SDK and clients switch on besides the status itself."""
    if code == "budget_exceeded":
        return "insufficient_quota"
    if status_code >= 500:
        return "server_error"
    return {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
        status_code, "invalid_request_error"
    )


def openai_error_body(status_code: int, code: str, message: str, param: str | None = None) -> dict:
    """`{"error": {"message", "type", "param", "code"}}`: the shape the openai SDK turns into its typed errors."""
    return {"error": {"message": message, "type": _openai_type(status_code, code), "param": param, "code": code}}


def speaks_openai(request) -> bool:
    """Requests under /v1/ (the OpenAI-compatible API) get OpenAI's error shape; everything else the portal's."""
    return getattr(request, "path", "").startswith(OPENAI_PREFIX)


def json_error(request, status_code: int, code: str, message: str, headers: dict | None = None) -> JsonResponse:
    if speaks_openai(request):
        body = openai_error_body(status_code, code, message)
    else:
        body = error_body(code, message, request_id_of(request))
    response = JsonResponse(body, status=status_code)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _flatten(detail, prefix: str = "") -> dict[str, list[str]]:
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            out.update(_flatten(value, f"{prefix}{key}." if key != "non_field_errors" else prefix))
        return out
    if isinstance(detail, list) and detail and not isinstance(detail[0], (dict, list)):
        return {prefix.rstrip(".") or "non_field_errors": [str(item) for item in detail]}
    if isinstance(detail, list):
        out = {}
        for index, value in enumerate(detail):
            out.update(_flatten(value, f"{prefix}{index}."))
        return out
    return {prefix.rstrip(".") or "non_field_errors": [str(detail)]}


_CODES = {
    exceptions.ParseError: (400, "malformed_json"),
    exceptions.NotAuthenticated: (401, "not_authenticated"),
    exceptions.AuthenticationFailed: (401, "invalid_credentials"),
    exceptions.PermissionDenied: (403, "forbidden"),
    exceptions.NotFound: (404, "not_found"),
    exceptions.MethodNotAllowed: (405, "method_not_allowed"),
    exceptions.NotAcceptable: (406, "not_acceptable"),
    exceptions.UnsupportedMediaType: (415, "unsupported_media_type"),
    exceptions.Throttled: (429, "rate_limited"),
}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's hook: map every exception a client can cause to the API's error shape."""
    request = context.get("request")
    request_id = request_id_of(request)
    headers: dict[str, str] = {}
    extra: dict = {}
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, RequestDataTooBig):
        exc = ApiError("The request body is too large.", code="payload_too_large", status_code=413)
    elif isinstance(exc, ValidationError):
        exc = UnprocessableEntity(" ".join(exc.messages), code=getattr(exc, "code", None) or "validation_error")

    if isinstance(exc, exceptions.NotAuthenticated) and request is not None:
        _record_missing_credentials(request)

    if isinstance(exc, ApiError):
        status_code, code, message = exc.status_code, exc.error_code, str(exc.detail)
        headers.update(exc.headers)
        if getattr(exc, "fields", None):
            extra["fields"] = exc.fields
    elif isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.items()))
        status_code, code = status.HTTP_422_UNPROCESSABLE_ENTITY, "validation_error"
        message = f"{first[0]}: {first[1][0]}" if first[0] != "non_field_errors" else first[1][0]
        extra["fields"] = fields
    elif isinstance(exc, exceptions.APIException):
        status_code = exc.status_code
        code = next((value[1] for kind, value in _CODES.items() if isinstance(exc, kind)), exc.default_code)
        detail_code = getattr(exc.detail, "code", None)
        code = getattr(exc, "error_code", None) or (
            detail_code if detail_code and detail_code != exc.default_code else code
        )
        message = str(exc.detail) if not isinstance(exc.detail, (dict, list)) else exc.default_detail
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            headers["Retry-After"] = str(max(1, int(exc.wait + 0.999)))
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
    else:
        return None  # a server fault: the 500 handler answers in the same shape and logs it
    if request is not None and speaks_openai(request):
        param = next(iter(extra.get("fields") or {}), None)
        return Response(openai_error_body(status_code, code, message, param), status=status_code, headers=headers)
    return Response(error_body(code, message, request_id, **extra), status=status_code, headers=headers)


def _record_missing_credentials(request) -> None:
    from apps.compliance.services import access_event_from_request

    access_event_from_request(request, reason="missing_credentials")
