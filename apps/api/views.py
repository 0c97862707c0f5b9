"""/api/v1/me, and the JSON answers for URLs nobody routes and for server faults under the API paths."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.selectors import user_role
from apps.api.errors import json_error
from apps.apikeys.authentication import KeyPrincipal
from apps.tenants.middleware import wants_json


class MeView(APIView):
    """Who is calling: tenant, user, and the key with its scopes and pins (null for a portal session)."""

    @extend_schema(
        responses=inline_serializer(
            "Me",
            {
                "tenant": serializers.DictField(),
                "user": serializers.DictField(),
                "key": serializers.DictField(allow_null=True),
                "authenticated_by": serializers.ChoiceField(choices=["api_key", "session"]),
            },
        )
    )
    def get(self, request):
        key = request.auth if isinstance(request.auth, KeyPrincipal) else None
        role = key.owner_role if key else getattr(user_role(request.user), "value", None)
        return Response(
            {
                "tenant": {
                    "slug": request.tenant.schema_name,
                    "name": request.tenant.name,
                    "plan": request.tenant.plan,
                },
                "user": {"id": request.user.pk, "email": request.user.email, "role": role},
                "key": {"prefix": key.prefix, "scopes": list(key.scopes), "model_pins": key.model_pins}
                if key
                else None,
                "authenticated_by": "api_key" if key else "session",
            }
        )


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if wants_json(request):
        return json_error(request, 404, "not_found", "There is nothing at this address.")
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if wants_json(request):
        return json_error(request, 500, "internal_error", "Something went wrong on our side; it was logged.")
    return render(request, "500.html", status=500)
