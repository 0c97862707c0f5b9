from io import BytesIO

from django.conf import settings
from rest_framework.parsers import BaseParser, JSONParser

from apps.api.errors import ApiError


class BoundedJSONParser(JSONParser):
    """Reads at most API_MAX_BODY_BYTES, also when the client sends no Content-Length (chunked bodies)."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.API_MAX_BODY_BYTES
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise ApiError(f"The request body is larger than {limit} bytes.", code="payload_too_large", status_code=413)
        return super().parse(BytesIO(body), media_type, parser_context)


class UnreadBodyParser(BaseParser):
    """For views that read `request.body` themselves: accepts any content type and leaves the stream unread.

    DRF parses on first access to `request.data` or `request.POST`, which the session CSRF check triggers;
    with no parser at all that access fails as 415 before the view could decide for itself.
    """

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None) -> dict:
        return {}
