"""/api/v1/models: the tenant's models, versions, aliases, promotion and rollback. Thin views over services."""

import tempfile
from pathlib import Path

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from apps.api.parsers import BoundedJSONParser
from apps.apikeys.permissions import ScopesByMethodMixin
from apps.registry import selectors, services
from apps.registry.models import AliasChange, ModelVersion, RegisteredModel


class VersionOutput(serializers.ModelSerializer):
    created_by = serializers.EmailField(source="created_by.email", read_only=True, default=None)
    aliases = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["version", "status", "flavors", "signature", "run_id", "source", "aliases", "created_by", "created"]

    def get_aliases(self, version: ModelVersion) -> list[str]:
        return sorted(alias.alias for alias in version.aliases.all())


class ModelOutput(serializers.ModelSerializer):
    aliases = serializers.SerializerMethodField()

    class Meta:
        model = RegisteredModel
        fields = ["name", "description", "aliases", "created"]

    def get_aliases(self, model: RegisteredModel) -> dict[str, int]:
        return {alias.alias: alias.version.version for alias in model.aliases.all()}


class AliasChangeOutput(serializers.ModelSerializer):
    actor = serializers.EmailField(source="actor.email", read_only=True, default=None)

    class Meta:
        model = AliasChange
        fields = ["alias", "kind", "from_version", "to_version", "reason", "actor", "changed_at"]


class ModelInput(serializers.Serializer):
    name = serializers.CharField(max_length=63)
    description = serializers.CharField(required=False, allow_blank=True, default="")


class RunVersionInput(serializers.Serializer):
    run_id = serializers.CharField(max_length=64)
    artifact_path = serializers.CharField(max_length=200, default="model")


class UploadVersionInput(serializers.Serializer):
    file = serializers.FileField(help_text="A .zip or .tar.gz of an MLflow model directory")


class PromoteInput(serializers.Serializer):
    version = serializers.IntegerField(min_value=1)
    alias = serializers.CharField(max_length=63, default=services.DEFAULT_ALIAS)
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class AliasInput(serializers.Serializer):
    version = serializers.IntegerField(min_value=1)
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class RollbackInput(serializers.Serializer):
    alias = serializers.CharField(max_length=63, default=services.DEFAULT_ALIAS)
    reason = serializers.CharField(max_length=500)


class ArchiveInput(serializers.Serializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class _RegistryView(ScopesByMethodMixin, GenericAPIView):
    read_scopes = ("models:read",)
    write_scopes = ("models:write",)


def _valid(serializer_class, data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class ModelsView(_RegistryView):
    serializer_class = ModelOutput

    @extend_schema(operation_id="models_list", responses=ModelOutput(many=True))
    def get(self, request):
        page = self.paginate_queryset(selectors.model_list())
        return self.get_paginated_response(ModelOutput(page, many=True).data)

    @extend_schema(request=ModelInput, responses={201: ModelOutput})
    def post(self, request):
        model = services.model_create(actor=request.user, **_valid(ModelInput, request.data))
        return Response(ModelOutput(model).data, status=status.HTTP_201_CREATED)


class ModelDetailView(_RegistryView):
    serializer_class = ModelOutput

    def get(self, request, name: str):
        return Response(ModelOutput(selectors.model_get(name=name)).data)


class VersionsView(_RegistryView):
    serializer_class = VersionOutput
    parser_classes = [BoundedJSONParser, MultiPartParser]

    @extend_schema(operation_id="model_versions_list", responses=VersionOutput(many=True))
    def get(self, request, name: str):
        model = selectors.model_get(name=name)
        page = self.paginate_queryset(selectors.version_list(model=model))
        return self.get_paginated_response(VersionOutput(page, many=True).data)

    @extend_schema(
        request={"multipart/form-data": UploadVersionInput, "application/json": RunVersionInput},
        responses={201: VersionOutput},
    )
    def post(self, request, name: str):
        model = selectors.model_get(name=name)
        upload = request.FILES.get("file")
        if upload is not None:
            version = self._from_upload(request, model, upload)
        else:
            version = services.version_register_from_run(
                actor=request.user, model=model, **_valid(RunVersionInput, request.data)
            )
        return Response(VersionOutput(version).data, status=status.HTTP_201_CREATED)

    @staticmethod
    def _from_upload(request, model, upload):
        with tempfile.TemporaryDirectory() as scratch:
            archive = Path(scratch) / "package"
            with archive.open("wb") as out:
                for chunk in upload.chunks():
                    out.write(chunk)
            return services.version_register_from_upload(actor=request.user, model=model, archive=archive)


class VersionDetailView(_RegistryView):
    serializer_class = VersionOutput

    def get(self, request, name: str, version: int):
        model = selectors.model_get(name=name)
        return Response(VersionOutput(selectors.version_get(model=model, version=version)).data)


class VersionSchemaView(_RegistryView):
    @extend_schema(responses=OpenApiResponse(description="The version's MLflow input schema (JSON)"))
    def get(self, request, name: str, version: int):
        model_version = selectors.version_get(model=selectors.model_get(name=name), version=version)
        signature = model_version.signature or {}
        return Response(
            {
                "model": name,
                "version": model_version.version,
                "inputs": signature.get("inputs"),
                "outputs": signature.get("outputs"),
                "params": signature.get("params"),
            }
        )


class VersionArchiveView(_RegistryView):
    serializer_class = VersionOutput

    @extend_schema(request=ArchiveInput, responses=VersionOutput)
    def post(self, request, name: str, version: int):
        model_version = selectors.version_get(model=selectors.model_get(name=name), version=version)
        archived = services.version_archive(
            actor=request.user, version=model_version, **_valid(ArchiveInput, request.data)
        )
        return Response(VersionOutput(archived).data)


class AliasView(_RegistryView):
    serializer_class = ModelOutput

    @extend_schema(request=AliasInput, responses=ModelOutput)
    def put(self, request, name: str, alias: str):
        model = selectors.model_get(name=name)
        data = _valid(AliasInput, request.data)
        target = selectors.version_get(model=model, version=data["version"])
        services.alias_set(actor=request.user, model=model, alias=alias, version=target, reason=data["reason"])
        return Response(ModelOutput(selectors.model_get(name=name)).data)


class PromoteView(_RegistryView):
    serializer_class = ModelOutput

    @extend_schema(request=PromoteInput, responses=ModelOutput)
    def post(self, request, name: str):
        model = selectors.model_get(name=name)
        data = _valid(PromoteInput, request.data)
        target = selectors.version_get(model=model, version=data["version"])
        services.model_promote(
            actor=request.user, model=model, version=target, alias=data["alias"], reason=data["reason"]
        )
        return Response(ModelOutput(selectors.model_get(name=name)).data)


class RollbackView(_RegistryView):
    serializer_class = ModelOutput

    @extend_schema(request=RollbackInput, responses=ModelOutput)
    def post(self, request, name: str):
        model = selectors.model_get(name=name)
        services.model_rollback(actor=request.user, model=model, **_valid(RollbackInput, request.data))
        return Response(ModelOutput(selectors.model_get(name=name)).data)


class HistoryView(_RegistryView):
    serializer_class = AliasChangeOutput

    @extend_schema(operation_id="model_alias_history", responses=AliasChangeOutput(many=True))
    def get(self, request, name: str):
        page = self.paginate_queryset(selectors.alias_history(model=selectors.model_get(name=name)))
        return self.get_paginated_response(AliasChangeOutput(page, many=True).data)
