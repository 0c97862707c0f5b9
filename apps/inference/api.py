"""POST /api/v1/models/{name}/predict: a thin view over `services.predict`.

The body is read raw rather than through DRF's parsers: the compliance record hashes exactly what arrived,
also when it is not JSON at all, and the services decide what is refused and how.
"""

import time

from django.db import connection
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.api.client_ip import client_ip
from apps.api.errors import ApiError
from apps.api.parsers import UnreadBodyParser
from apps.api.request_id import current_request_id
from apps.apikeys.authentication import KeyPrincipal
from apps.apikeys.models import Scope
from apps.inference import services
from apps.monitoring.metrics import prediction_observe


class MayPredict(BasePermission):
    """Keys need the `inference` scope (checked by HasScopes); portal members must be allowed to hold keys."""

    message = "Your role may not call models."

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, KeyPrincipal):
            return True
        return request.user.has_perm("apikeys.manage_own_keys")


class PredictionOutput(serializers.Serializer):
    output = serializers.JSONField()
    model = serializers.CharField()
    model_version = serializers.CharField()
    alias = serializers.CharField(allow_null=True)
    pinned = serializers.BooleanField(help_text="the key is locked to this version of the model")
    canary = serializers.BooleanField(help_text="the deployment's canary version answered")
    request_id = serializers.CharField()
    latency_ms = serializers.FloatField()


def _query_version(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or not 0 < int(raw) < 2**31:
        raise ApiError("version must be a positive whole number.", code="invalid_version", status_code=400)
    return int(raw)


class PredictView(APIView):
    required_scopes = (Scope.INFERENCE,)
    parser_classes = (UnreadBodyParser,)

    def get_permissions(self):
        return [*super().get_permissions(), MayPredict()]

    @extend_schema(
        summary="Predict with a deployed model",
        description=(
            "Body: one of MLflow's input forms (`dataframe_split`, `dataframe_records`, `instances`, `inputs`, "
            "optionally `params`). The version answering is the alias's (`champion` by default), or `version`; "
            "a key pinned to a version of this model always gets that version. The input is checked against "
            "that version's signature before any model server is called."
        ),
        parameters=[
            OpenApiParameter("alias", str, description="alias to call (default champion)"),
            OpenApiParameter("version", int, description="version to call instead of an alias"),
        ],
        request=OpenApiTypes.OBJECT,
        responses={
            200: PredictionOutput,
            400: OpenApiResponse(description="malformed JSON"),
            404: OpenApiResponse(description="no deployed model by that name, alias or version"),
            413: OpenApiResponse(description="body too large"),
            415: OpenApiResponse(description="not application/json"),
            422: OpenApiResponse(description="input does not fit the MLflow forms or the model's signature"),
            502: OpenApiResponse(description="the model server failed, or the worker was lost"),
            503: OpenApiResponse(description="no replica available (Retry-After)"),
            504: OpenApiResponse(description="the model server did not answer in time"),
        },
    )
    def post(self, request, name: str) -> Response:
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
        alias = request.query_params.get("alias") or None
        version = _query_version(request.query_params.get("version"))
        try:
            prediction = services.predict(
                caller=caller,
                model_name=name,
                raw_body=request._request.body,
                content_type=request.content_type or "",
                request_id=request_id,
                alias=alias,
                version=version,
            )
        except services.PredictionRefused as refused:
            _observe(name, refused.model_version, refused.record_status, time.perf_counter() - started, None)
            raise
        upstream = prediction.upstream_ms / 1000 if prediction.upstream_ms is not None else None
        _observe(name, prediction.model_version, "ok", time.perf_counter() - started, upstream)
        body = PredictionOutput(prediction).data
        return Response(body, headers={"X-Model-Version": prediction.model_version})


def _observe(model: str, version: str, status: str, seconds: float, upstream_seconds: float | None) -> None:
    prediction_observe(
        tenant=connection.schema_name,
        model=model,
        version=version,
        status=status,
        total_seconds=seconds,
        upstream_seconds=upstream_seconds,
    )
