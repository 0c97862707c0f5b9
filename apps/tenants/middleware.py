"""Refuse every request to a suspended tenant, before sessions or views run."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

API_PREFIXES = ("/api/", "/v1/")


def wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIXES)


class TenantStatusMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        tenant = getattr(request, "tenant", None)
        if tenant is not None and not tenant.is_active:
            message = "This organisation's account is suspended. Contact the platform operator."
            if wants_json(request):
                return JsonResponse({"error": {"code": "tenant_suspended", "message": message}}, status=403)
            return render(request, "tenants/suspended.html", {"message": message}, status=403)
        return self.get_response(request)
