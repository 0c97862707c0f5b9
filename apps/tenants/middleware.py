"""Tenant routing by host (cached) and refusal of suspended tenants, before sessions or views run."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django_tenants.middleware.main import TenantMainMiddleware

from apps.tenants.selectors import tenant_for_host

API_PREFIXES = ("/api/", "/v1/")


def wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIXES)


class CachedTenantMiddleware(TenantMainMiddleware):
    """django-tenants' routing, with the host -> tenant lookup served from Redis (invalidated on change),
    so the hot path does not query the public schema on every request."""

    def get_tenant(self, domain_model, hostname: str):
        tenant = tenant_for_host(hostname)
        if tenant is None:
            raise domain_model.DoesNotExist(hostname)
        return tenant


class TenantStatusMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        tenant = getattr(request, "tenant", None)
        if tenant is not None and not tenant.is_active:
            message = "This organisation's account is suspended. Contact the platform operator."
            if wants_json(request):
                from apps.api.errors import json_error

                return json_error(request, 403, "tenant_suspended", message)
            return render(request, "tenants/suspended.html", {"message": message}, status=403)
        return self.get_response(request)
