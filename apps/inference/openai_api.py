"""/v1/: the OpenAI-compatible API on a tenant's host, so the openai SDK works with only `base_url` changed.

Thin views over `openai_services`. Errors on these paths come in OpenAI's shape (`apps.api.errors`), so the SDK
raises its own typed exceptions (`AuthenticationError`, `NotFoundError`, `RateLimitError`, ...).
"""

import time
from functools import partial

from django.db import connection
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.api.client_ip import client_ip
from apps.api.errors import ApiError
from apps.api.parsers import UnreadBodyParser
from apps.api.request_id import current_request_id
from apps.apikeys.authentication import KeyPrincipal
from apps.apikeys.models import Scope
from apps.inference import idempotency, services
from apps.inference.api import MayPredict
from apps.inference.openai_services import openai_call, openai_idempotent
from apps.monitoring.metrics import prediction_observe
from apps.serving.selectors import openai_model_list


class _OpenAIView(APIView):
    required_scopes = (Scope.INFERENCE,)
    parser_classes = (UnreadBodyParser,)
    operation = ""

    def get_permissions(self):
        return [*super().get_permissions(), MayPredict()]

    @extend_schema(request=OpenApiTypes.OBJECT, responses={200: OpenApiTypes.OBJECT}, tags=["openai"])
    def post(self, request):
        started = time.perf_counter()
        request_id = services.new_request_id()
        request._request.request_id = request_id
        current_request_id.set(request_id)
        key = request.auth if isinstance(request.auth, KeyPrincipal) else None
        caller = services.Caller(
            user_id=request.user.pk,
            client_ip=client_ip(request._request),
            key_id=key.id if key else None,
            key_prefix=key.prefix if key else "",
            model_pins=key.model_pins if key else None,
        )
        answer = partial(self._answer, request, caller, key, request_id, started)
        idempotency_key = request.headers.get(idempotency.HEADER)
        if idempotency_key is None:
            return answer()
        outcome = openai_idempotent(
            operation=self.operation,
            caller=caller,
            request_id=request_id,
            raw_body=request._request.body,
            key=idempotency_key,
            endpoint=request.path,
            call=partial(self._kept, answer),
        )
        headers = dict(outcome.answer.headers)
        if outcome.replayed:
            headers[idempotency.REPLAYED_HEADER] = "true"
        return Response(outcome.answer.body, status=outcome.answer.status, headers=headers)

    def _kept(self, answer) -> idempotency.Answer:
        """The answer as the idempotency store keeps it: refusals too, in the shape the client got them."""
        try:
            response = answer()
        except ApiError as error:
            response = self.handle_exception(error)
        headers = {name: response[name] for name in ("X-Model-Version", "Retry-After") if response.has_header(name)}
        return idempotency.Answer(status=response.status_code, body=response.data, headers=headers)

    def _answer(self, request, caller, key, request_id: str, started: float):
        try:
            answer = openai_call(
                operation=self.operation,
                caller=caller,
                raw_body=request._request.body,
                content_type=request.content_type or "",
                request_id=request_id,
                plan=getattr(request.tenant, "plan", "free"),
                key_limits_source=key,
                http_request=request,
            )
        except services.PredictionRefused as refused:
            self._observe("", refused.model_version, refused.record_status, started)
            raise
        headers = {"X-Model-Version": answer.model_version}
        if answer.events is not None:
            self._observe(answer.model, answer.model_version, "streamed", started)
            response = StreamingHttpResponse(answer.events, content_type="text/event-stream")
            for name, value in {**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}.items():
                response[name] = value
            return response
        self._observe(answer.model, answer.model_version, "ok", started)
        return Response(answer.body, headers=headers)

    @staticmethod
    def _observe(model: str, version: str, status: str, started: float) -> None:
        prediction_observe(
            tenant=connection.schema_name,
            model=model,
            version=version,
            status=status,
            total_seconds=time.perf_counter() - started,
            upstream_seconds=None,
        )


class ChatCompletionsView(_OpenAIView):
    operation = "chat"


class CompletionsView(_OpenAIView):
    operation = "completions"


class EmbeddingsView(_OpenAIView):
    operation = "embeddings"


class ModelsView(APIView):
    """The tenant's models served over the OpenAI protocol, by the name clients pass as `model`."""

    required_scopes = (Scope.INFERENCE,)

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, tags=["openai"])
    def get(self, request):
        owner = connection.schema_name
        data = [
            {"id": name, "object": "model", "created": int(created.timestamp()), "owned_by": owner}
            for name, created in openai_model_list()
        ]
        return Response({"object": "list", "data": data})
