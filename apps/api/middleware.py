"""Request ids for every response; JSON, never HTML, for anything that goes wrong under the API paths."""

import logging
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from apps.api.errors import json_error
from apps.api.request_id import current_request_id, request_id_from_header
from apps.tenants.middleware import wants_json

logger = logging.getLogger("apps.api")


class RequestIdMiddleware:
    """Outermost: even an unknown host's 404 carries an X-Request-ID."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.request_id = request_id_from_header(request.headers.get("X-Request-ID"))
        token = current_request_id.set(request.request_id)
        try:
            response = self.get_response(request)
        finally:
            current_request_id.reset(token)
        response["X-Request-ID"] = request.request_id
        return response


class ApiErrorMiddleware:
    """Innermost: refuses oversized bodies before anything reads them, and answers crashes in JSON."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if wants_json(request):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return json_error(request, 400, "bad_content_length", "Content-Length is not a number.")
            # Model packages arrive as multipart uploads (streamed to disk); everything else is small JSON.
            is_upload = request.content_type == "multipart/form-data"
            limit = settings.MODEL_UPLOAD_MAX_BYTES if is_upload else settings.API_MAX_BODY_BYTES
            if length > limit:
                return json_error(request, 413, "payload_too_large", f"The request body is larger than {limit} bytes.")
        response = self.get_response(request)
        decision = getattr(request, "ratelimit", None)
        if decision is not None:
            response["RateLimit-Limit"] = str(decision.limit)
            response["RateLimit-Remaining"] = str(decision.remaining)
            response["RateLimit-Reset"] = str(decision.reset_seconds)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not wants_json(request):
            return None
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(request, 500, "internal_error", "Something went wrong on our side; it was logged.")
