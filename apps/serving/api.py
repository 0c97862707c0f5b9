"""/api/v1/servers and /api/v1/deployments: model servers with their health, and what they serve.

Reads need the key scope `models:read` and a role that sees servers; writes need `models:write`, and the services
check the role. The auth header's value is accepted and never returned.
"""

from django.core.exceptions import PermissionDenied
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import SAFE_METHODS
from rest_framework.response import Response

from apps.apikeys.permissions import ScopesByMethodMixin
from apps.registry.models import ModelVersion, RegisteredModel
from apps.serving import selectors, services
from apps.serving.models import Deployment, ModelServer, ServerReplica

_PRICE = {"max_digits": 12, "decimal_places": 6, "min_value": 0}


class _ServingView(ScopesByMethodMixin, GenericAPIView):
    read_scopes = ("models:read",)
    write_scopes = ("models:write",)
    view_permission = "serving.view_modelserver"

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if request.method in SAFE_METHODS and not request.user.has_perm(self.view_permission):
            raise PermissionDenied("Your role cannot see model servers and deployments.")


# --- serializers -----------------------------------------------------------------------------------------------


class ReplicaOutput(serializers.ModelSerializer):
    class Meta:
        model = ServerReplica
        fields = ["id", "base_url", "is_up", "status_changed_at", "last_checked_at", "last_error"]


class ServerOutput(serializers.ModelSerializer):
    queue_name = serializers.CharField(read_only=True)
    has_auth_header = serializers.BooleanField(read_only=True)
    replicas = ReplicaOutput(many=True, read_only=True)
    created_by = serializers.EmailField(source="created_by.email", read_only=True, default=None)

    class Meta:
        model = ModelServer
        fields = [
            "id", "name", "protocol", "gpu_pool", "queue_name", "accelerator", "request_timeout_seconds",
            "max_concurrency", "auth_header_name", "has_auth_header", "replicas", "created_by", "created", "updated",
        ]  # fmt: skip


class ServerInput(serializers.Serializer):
    name = serializers.CharField(max_length=63)
    protocol = serializers.ChoiceField(choices=ModelServer.Protocol.choices)
    gpu_pool = serializers.CharField(max_length=50, help_text="Requests are queued on `pool.<gpu_pool>`.")
    replica_urls = serializers.ListField(child=serializers.CharField(max_length=500), allow_empty=False)
    accelerator = serializers.CharField(max_length=100, required=False, allow_blank=True)
    request_timeout_seconds = serializers.IntegerField(
        min_value=1, max_value=services.MAX_TIMEOUT_SECONDS, required=False
    )
    max_concurrency = serializers.IntegerField(min_value=1, max_value=services.MAX_CONCURRENCY, required=False)
    auth_header_name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    auth_header_value = serializers.CharField(
        max_length=services.MAX_HEADER_VALUE,
        required=False,
        allow_blank=True,
        write_only=True,
        trim_whitespace=False,
        help_text="Sent to the server with every request; stored encrypted and never shown. Empty clears the header.",
    )


class ServerUpdateInput(ServerInput):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, partial=True, **kwargs)


class ServerRef(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class DeploymentOutput(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name", read_only=True)
    alias = serializers.CharField(read_only=True, allow_null=True, help_text="null for a deployment of a version")
    version = serializers.IntegerField(source="version.version", read_only=True, default=None, allow_null=True)
    canary_version = serializers.IntegerField(
        source="canary_version.version", read_only=True, default=None, allow_null=True
    )
    server = ServerRef(read_only=True)
    created_by = serializers.EmailField(source="created_by.email", read_only=True, default=None)

    class Meta:
        model = Deployment
        fields = [
            "id", "model", "alias", "version", "server", "canary_version", "canary_percent", "price_per_request",
            "price_per_1k_tokens", "price_per_gpu_second", "is_active", "created_by", "created", "updated",
        ]  # fmt: skip

    def to_representation(self, deployment: Deployment) -> dict:
        data = super().to_representation(deployment)
        data["alias"] = deployment.alias or None
        return data


class DeploymentInput(serializers.Serializer):
    model = serializers.CharField(max_length=63, help_text="The registered model's name.")
    alias = serializers.CharField(max_length=63, required=False, allow_blank=True, help_text="Deploy an alias …")
    version = serializers.IntegerField(min_value=1, required=False, allow_null=True, help_text="… or one version.")
    server = serializers.IntegerField(help_text="The model server's id.")
    canary_version = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    canary_percent = serializers.IntegerField(min_value=0, max_value=100, required=False)
    price_per_request = serializers.DecimalField(**_PRICE, required=False)
    price_per_1k_tokens = serializers.DecimalField(**_PRICE, required=False)
    price_per_gpu_second = serializers.DecimalField(**_PRICE, required=False)


class DeploymentUpdateInput(serializers.Serializer):
    server = serializers.IntegerField(required=False)
    canary_version = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    canary_percent = serializers.IntegerField(min_value=0, max_value=100, required=False)
    price_per_request = serializers.DecimalField(**_PRICE, required=False)
    price_per_1k_tokens = serializers.DecimalField(**_PRICE, required=False)
    price_per_gpu_second = serializers.DecimalField(**_PRICE, required=False)


# --- resolving input references ------------------------------------------------------------------------------


def _refused(field: str, message: str) -> serializers.ValidationError:
    return serializers.ValidationError({field: [message]})


def _model_named(name: str) -> RegisteredModel:
    model = RegisteredModel.objects.filter(name=name).first()
    if model is None:
        raise _refused("model", f"No model is named {name!r}.")
    return model


def _server_with_id(server_id: int) -> ModelServer:
    server = ModelServer.objects.filter(pk=server_id).first()
    if server is None:
        raise _refused("server", "No such server.")
    return server


def _version_of(model: RegisteredModel, number: int | None, field: str) -> ModelVersion | None:
    if number is None:
        return None
    version = ModelVersion.objects.filter(model=model, version=number).first()
    if version is None:
        raise _refused(field, f"{model.name} has no version {number}.")
    return version


# --- views -----------------------------------------------------------------------------------------------------


class ServersView(_ServingView):
    serializer_class = ServerOutput

    def get_queryset(self):
        return selectors.server_list()

    @extend_schema(operation_id="servers_list", responses=ServerOutput(many=True))
    def get(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ServerOutput(page, many=True).data)

    @extend_schema(operation_id="servers_create", request=ServerInput, responses={201: ServerOutput})
    def post(self, request):
        data = ServerInput(data=request.data)
        data.is_valid(raise_exception=True)
        server = services.server_create(actor=request.user, **data.validated_data)
        return Response(ServerOutput(selectors.server_get(server_id=server.pk)).data, status=status.HTTP_201_CREATED)


class ServerDetailView(_ServingView):
    serializer_class = ServerOutput

    @extend_schema(operation_id="servers_retrieve", responses=ServerOutput)
    def get(self, request, server_id: int):
        return Response(ServerOutput(selectors.server_get(server_id=server_id)).data)

    @extend_schema(operation_id="servers_update", request=ServerUpdateInput, responses=ServerOutput)
    def patch(self, request, server_id: int):
        server = selectors.server_get(server_id=server_id)
        data = ServerUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.server_update(actor=request.user, server=server, **data.validated_data)
        return Response(ServerOutput(selectors.server_get(server_id=server_id)).data)

    @extend_schema(operation_id="servers_delete", responses={204: OpenApiResponse(description="Deleted.")})
    def delete(self, request, server_id: int):
        services.server_delete(actor=request.user, server=selectors.server_get(server_id=server_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ServerProbeView(_ServingView):
    serializer_class = ServerOutput

    @extend_schema(operation_id="servers_probe", request=None, responses=ServerOutput)
    def post(self, request, server_id: int):
        server = services.server_probe(actor=request.user, server=selectors.server_get(server_id=server_id))
        return Response(ServerOutput(server).data)


class DeploymentsView(_ServingView):
    serializer_class = DeploymentOutput
    view_permission = "serving.view_deployment"

    def get_queryset(self):
        active = self.request.query_params.get("active")
        return selectors.deployment_list(
            model_name=self.request.query_params.get("model") or None,
            active={"true": True, "false": False}.get(active) if active else None,
        )

    @extend_schema(
        operation_id="deployments_list",
        parameters=[
            OpenApiParameter("model", str, description="Only deployments of this model."),
            OpenApiParameter("active", bool, description="Only active (true) or deactivated (false) deployments."),
        ],
        responses=DeploymentOutput(many=True),
    )
    def get(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(DeploymentOutput(page, many=True).data)

    @extend_schema(operation_id="deployments_create", request=DeploymentInput, responses={201: DeploymentOutput})
    def post(self, request):
        data = DeploymentInput(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        model = _model_named(fields.pop("model"))
        deployment = services.deployment_create(
            actor=request.user,
            model=model,
            server=_server_with_id(fields.pop("server")),
            version=_version_of(model, fields.pop("version", None), "version"),
            canary_version=_version_of(model, fields.pop("canary_version", None), "canary_version"),
            **fields,
        )
        return Response(
            DeploymentOutput(selectors.deployment_get(deployment_id=deployment.pk)).data,
            status=status.HTTP_201_CREATED,
        )


class DeploymentDetailView(_ServingView):
    serializer_class = DeploymentOutput
    view_permission = "serving.view_deployment"

    @extend_schema(operation_id="deployments_retrieve", responses=DeploymentOutput)
    def get(self, request, deployment_id: int):
        return Response(DeploymentOutput(selectors.deployment_get(deployment_id=deployment_id)).data)

    @extend_schema(operation_id="deployments_update", request=DeploymentUpdateInput, responses=DeploymentOutput)
    def patch(self, request, deployment_id: int):
        deployment = selectors.deployment_get(deployment_id=deployment_id)
        data = DeploymentUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        changes = dict(data.validated_data)
        if "server" in changes:
            changes["server"] = _server_with_id(changes["server"])
        if "canary_version" in changes:
            changes["canary_version"] = _version_of(deployment.model, changes["canary_version"], "canary_version")
        services.deployment_update(actor=request.user, deployment=deployment, **changes)
        return Response(DeploymentOutput(selectors.deployment_get(deployment_id=deployment_id)).data)


class DeploymentDeactivateView(_ServingView):
    serializer_class = DeploymentOutput
    view_permission = "serving.view_deployment"

    @extend_schema(operation_id="deployments_deactivate", request=None, responses=DeploymentOutput)
    def post(self, request, deployment_id: int):
        deployment = selectors.deployment_get(deployment_id=deployment_id)
        services.deployment_deactivate(actor=request.user, deployment=deployment)
        return Response(DeploymentOutput(selectors.deployment_get(deployment_id=deployment_id)).data)
