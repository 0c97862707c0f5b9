"""/api/v1/keys: list, create, retrieve, update, rotate, revoke. Thin views over the key services."""

from decimal import Decimal

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from apps.accounts.models import User
from apps.apikeys import services
from apps.apikeys.authentication import KeyPrincipal
from apps.apikeys.models import ApiKey, Scope
from apps.apikeys.selectors import apikey_get_for, apikey_list_for


class KeyOutput(serializers.ModelSerializer):
    owner = serializers.EmailField(source="owner.email", read_only=True)
    status = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = [
            "id", "name", "prefix", "owner", "scopes", "model_pins", "allowed_networks", "requests_per_minute",
            "tokens_per_minute", "monthly_spend_limit", "expires_at", "created", "rotated_at", "last_used_at",
            "revoked_at", "status",
        ]  # fmt: skip

    def get_status(self, key: ApiKey) -> str:
        from django.utils import timezone

        if key.revoked_at:
            return "revoked"
        if key.expires_at and key.expires_at <= timezone.now():
            return "expired"
        return "active"


class KeyWithSecretOutput(KeyOutput):
    secret = serializers.CharField(read_only=True, help_text="Shown once. Store it now: it cannot be retrieved.")

    class Meta(KeyOutput.Meta):
        fields = [*KeyOutput.Meta.fields, "secret"]


class KeyInput(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices), allow_empty=False)
    model_pins = serializers.DictField(child=serializers.CharField(max_length=20), required=False)
    allowed_networks = serializers.ListField(child=serializers.CharField(max_length=49), required=False)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    requests_per_minute = serializers.IntegerField(min_value=1, max_value=1_000_000, required=False, allow_null=True)
    tokens_per_minute = serializers.IntegerField(
        min_value=0,
        max_value=services.MAX_TOKENS_PER_MINUTE,
        required=False,
        allow_null=True,
        help_text="Tokens (prompt and completion) per minute for this key; null: the plan's per-key default.",
    )
    monthly_spend_limit = serializers.DecimalField(
        max_digits=12,
        decimal_places=6,
        min_value=Decimal("0"),
        required=False,
        allow_null=True,
        help_text="Spend budget per calendar month (UTC) for this key; null: only the tenant's budget applies.",
    )
    owner = serializers.EmailField(required=False, help_text="Owners may create keys for another member.")


class KeyUpdateInput(KeyInput):
    owner = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, partial=True, **kwargs)


class RotateInput(serializers.Serializer):
    grace_seconds = serializers.IntegerField(min_value=0, max_value=services.MAX_GRACE_SECONDS, default=0)


def _granting_scopes(request) -> tuple[str, ...] | None:
    return request.auth.scopes if isinstance(request.auth, KeyPrincipal) else None


def _with_secret(key: ApiKey, secret: str) -> dict:
    key.secret = secret
    return KeyWithSecretOutput(key).data


class KeysView(GenericAPIView):
    required_scopes = ("keys:manage",)
    serializer_class = KeyOutput

    def get_queryset(self):
        return apikey_list_for(user=self.request.user)

    @extend_schema(operation_id="keys_list", responses=KeyOutput(many=True))
    def get(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(KeyOutput(page, many=True).data)

    @extend_schema(request=KeyInput, responses={201: KeyWithSecretOutput})
    def post(self, request):
        data = KeyInput(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        owner_email = fields.pop("owner", None)
        owner = User.objects.filter(email__iexact=owner_email).first() if owner_email else request.user
        if owner is None:
            raise serializers.ValidationError({"owner": ["No member has this email."]})
        key, secret = services.apikey_create(
            actor=request.user, owner=owner, granting_scopes=_granting_scopes(request), **fields
        )
        return Response(_with_secret(key, secret), status=status.HTTP_201_CREATED)


class KeyDetailView(GenericAPIView):
    required_scopes = ("keys:manage",)
    serializer_class = KeyOutput

    def get(self, request, key_id: int):
        return Response(KeyOutput(apikey_get_for(user=request.user, key_id=key_id)).data)

    @extend_schema(request=KeyUpdateInput, responses=KeyOutput)
    def patch(self, request, key_id: int):
        key = apikey_get_for(user=request.user, key_id=key_id)
        data = KeyUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        key = services.apikey_update(
            actor=request.user, key=key, granting_scopes=_granting_scopes(request), **data.validated_data
        )
        return Response(KeyOutput(key).data)


class KeyRotateView(GenericAPIView):
    required_scopes = ("keys:manage",)
    serializer_class = KeyWithSecretOutput

    @extend_schema(request=RotateInput, responses=KeyWithSecretOutput)
    def post(self, request, key_id: int):
        key = apikey_get_for(user=request.user, key_id=key_id)
        data = RotateInput(data=request.data)
        data.is_valid(raise_exception=True)
        key, secret = services.apikey_rotate(actor=request.user, key=key, **data.validated_data)
        return Response(_with_secret(key, secret))


class KeyRevokeView(GenericAPIView):
    required_scopes = ("keys:manage",)
    serializer_class = KeyOutput

    @extend_schema(request=None, responses=KeyOutput)
    def post(self, request, key_id: int):
        key = services.apikey_revoke(actor=request.user, key=apikey_get_for(user=request.user, key_id=key_id))
        return Response(KeyOutput(key).data)
