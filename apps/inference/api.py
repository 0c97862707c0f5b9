"""POST /api/v1/models/{name}/predict and GET /api/v1/jobs/{id}: thin views over `services` and `jobs`.

The body is read raw rather than through DRF's parsers: the compliance record hashes exactly what arrived,
also when it is not JSON at all, and the services decide what is refused and how.
"""

import time
from functools import partial

from django.db import connection
from django.urls import reverse
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
from apps.inference import idempotency, jobs, services
from apps.monitoring.metrics import prediction_observe

RESPOND_ASYNC = "respond-async"
# What a kept answer repeats besides its status and body; X-Request-ID is always the replaying request's own.
KEPT_HEADERS = ("X-Model-Version", "Location", "Preference-Applied", "Retry-After")


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


class JobAcceptedOutput(serializers.Serializer):
    job_id = serializers.CharField(help_text="the request id; poll /api/v1/jobs/{job_id}")
    status = serializers.CharField(help_text="always `queued` here")
    request_id = serializers.CharField()
    model = serializers.CharField()
    model_version = serializers.CharField()
    alias = serializers.CharField(allow_null=True)
    url = serializers.CharField(help_text="where to poll, as in the Location header")


class JobErrorOutput(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class JobOutput(serializers.Serializer):
    job_id = serializers.CharField()
    status = serializers.ChoiceField(choices=[jobs.QUEUED, jobs.RUNNING, jobs.SUCCEEDED, jobs.FAILED])
    request_id = serializers.CharField(help_text="the compliance record's request id")
    model = serializers.CharField()
    model_version = serializers.CharField()
    alias = serializers.CharField(allow_null=True)
    result = PredictionOutput(allow_null=True, help_text="what a sync predict would have answered; once succeeded")
    error = JobErrorOutput(allow_null=True, help_text="why it failed; once failed")
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


def caller_of(request) -> services.Caller:
    """Who is asking: the key (with its pins) or the portal member, and from where."""
    key = request.auth if isinstance(request.auth, KeyPrincipal) else None
    return services.Caller(
        user_id=request.user.pk,
        client_ip=client_ip(request._request),
        key_id=key.id if key else None,
        key_prefix=key.prefix if key else "",
        model_pins=key.model_pins if key else None,
    )


def preference_names(header: str) -> set[str]:
    """The preferences named in a `Prefer` header (RFC 7240): `name[=value][;param...]`, comma-separated.

    Commas inside quoted values do not split, and names are case-insensitive.
    """
    names, part, quoted, escaped = set(), [], False, False
    for char in header + ",":
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            name = "".join(part).split(";", 1)[0].split("=", 1)[0].strip().lower()
            if name:
                names.add(name)
            part = []
            continue
        part.append(char)
    return names


def _respond_async(request) -> bool:
    """`?mode=async|sync` when given, else whether the client prefers `respond-async`."""
    mode = request.query_params.get("mode")
    if mode is None or mode == "":
        return RESPOND_ASYNC in preference_names(request.headers.get("Prefer", ""))
    if mode not in ("sync", "async"):
        raise ApiError("mode must be sync or async.", code="invalid_mode", status_code=400)
    return mode == "async"


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
            "that version's signature before any model server is called.\n\n"
            "With `Prefer: respond-async` (or `?mode=async`) the request is checked and dispatched the same way "
            "but answered at once with 202 and a job to poll at `/api/v1/jobs/{job_id}`.\n\n"
            "With an `Idempotency-Key`, the same key and request within 24 hours get the first answer (2xx or "
            "4xx; header `Idempotent-Replayed: true`) and the model is called once, also for requests arriving "
            "together; a 5xx is not kept, so a retry runs again."
        ),
        parameters=[
            OpenApiParameter("alias", str, description="alias to call (default champion)"),
            OpenApiParameter("version", int, description="version to call instead of an alias"),
            OpenApiParameter("mode", str, enum=["sync", "async"], description="async: answer 202 with a job"),
            OpenApiParameter(
                "Prefer", str, OpenApiParameter.HEADER, description="`respond-async` (RFC 7240): as ?mode=async"
            ),
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                description="1-255 printable ASCII characters; the same key and request get the first answer",
            ),
        ],
        request=OpenApiTypes.OBJECT,
        responses={
            200: PredictionOutput,
            202: OpenApiResponse(JobAcceptedOutput, description="dispatched; poll Location (async mode)"),
            400: OpenApiResponse(description="malformed JSON, ?version, ?mode or Idempotency-Key"),
            404: OpenApiResponse(description="no deployed model by that name, alias or version"),
            409: OpenApiResponse(description="a request with this Idempotency-Key is still running"),
            413: OpenApiResponse(description="body too large"),
            415: OpenApiResponse(description="not application/json"),
            422: OpenApiResponse(
                description="input does not fit the MLflow forms or the model's signature; Idempotency-Key reused"
            ),
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
        caller = caller_of(request)
        alias = request.query_params.get("alias") or None
        version = _query_version(request.query_params.get("version"))
        respond_async = _respond_async(request)
        raw_body = request._request.body
        answer = partial(
            self._answer, request, name, caller, request_id, raw_body, alias, version, respond_async, started
        )
        key = request.headers.get(idempotency.HEADER)
        if key is None:
            return answer()
        outcome = services.predict_idempotent(
            caller=caller,
            model_name=name,
            request_id=request_id,
            raw_body=raw_body,
            started=started,
            key=key,
            endpoint=request.path,
            variants=(f"alias={alias or ''}", f"version={version or ''}", f"async={respond_async}"),
            call=partial(self._kept, answer),
        )
        headers = dict(outcome.answer.headers)
        if outcome.replayed:
            headers[idempotency.REPLAYED_HEADER] = "true"
        return Response(outcome.answer.body, status=outcome.answer.status, headers=headers)

    def _answer(self, request, name, caller, request_id, raw_body, alias, version, respond_async, started) -> Response:
        """The prediction (200) or, in async mode, its job (202); a refusal is raised as it always was."""
        arguments = {
            "caller": caller,
            "model_name": name,
            "raw_body": raw_body,
            "content_type": request.content_type or "",
            "request_id": request_id,
            "alias": alias,
            "version": version,
        }
        try:
            if respond_async:
                return _accepted(services.predict_submit(**arguments))
            prediction = services.predict(**arguments)
        except services.PredictionRefused as refused:
            _observe(name, refused.model_version, refused.record_status, time.perf_counter() - started, None)
            raise
        upstream = prediction.upstream_ms / 1000 if prediction.upstream_ms is not None else None
        _observe(name, prediction.model_version, "ok", time.perf_counter() - started, upstream)
        body = PredictionOutput(prediction).data
        return Response(body, headers={"X-Model-Version": prediction.model_version})

    def _kept(self, answer) -> idempotency.Answer:
        """The answer as the idempotency store keeps it: refusals too, in the shape the client got them."""
        try:
            response = answer()
        except ApiError as error:
            response = self.handle_exception(error)
        headers = {name: response[name] for name in KEPT_HEADERS if response.has_header(name)}
        return idempotency.Answer(status=response.status_code, body=response.data, headers=headers)


def _accepted(accepted: services.JobAccepted) -> Response:
    url = reverse("api-job", args=[accepted.job_id])
    body = JobAcceptedOutput({**vars(accepted), "status": accepted.status, "url": url}).data
    headers = {"Location": url, "Preference-Applied": RESPOND_ASYNC, "X-Model-Version": accepted.model_version}
    return Response(body, status=202, headers=headers)


class JobView(APIView):
    required_scopes = (Scope.INFERENCE,)

    def get_permissions(self):
        return [*super().get_permissions(), MayPredict()]

    @extend_schema(
        summary="An async prediction's status and result",
        description=(
            "Only the key (or portal member) that created the job may read it; anyone else gets the 404 an unknown "
            "id gets. `status`: `queued` (waiting for a worker), `running` (at the model), `succeeded` (`result` "
            "holds what a sync predict would have answered) or `failed` (`error`). Jobs expire "
            "`INFERENCE_JOB_RESULT_SECONDS` (default 24 h) after they were created."
        ),
        responses={200: JobOutput, 404: OpenApiResponse(description="no such job, or not yours")},
    )
    def get(self, request, job_id: str) -> Response:
        caller = caller_of(request)
        job = jobs.job_get(schema=connection.schema_name, job_id=job_id, key_id=caller.key_id, user_id=caller.user_id)
        return Response(JobOutput(job).data)


def _observe(model: str, version: str, status: str, seconds: float, upstream_seconds: float | None) -> None:
    prediction_observe(
        tenant=connection.schema_name,
        model=model,
        version=version,
        status=status,
        total_seconds=seconds,
        upstream_seconds=upstream_seconds,
    )
