from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views import View
from django.views.decorators.http import require_http_methods

from apps.api.errors import json_error
from apps.tenants.forms import SignupForm
from apps.tenants.middleware import wants_json
from apps.tenants.services import tenant_signup


def landing(request: HttpRequest) -> HttpResponse:
    return render(request, "tenants/landing.html")


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        result = tenant_signup(
            name=form.cleaned_data["name"],
            slug=form.cleaned_data["slug"],
            plan=form.cleaned_data["plan"],
            owner_email=form.cleaned_data["email"],
            owner_password=form.cleaned_data["password"],
        )
        return render(request, "tenants/signup_done.html", {"result": result})
    return render(request, "tenants/signup.html", {"form": form}, status=400 if form.errors else 200)


class TenantNotFoundView(View):
    """Unknown host: a plain 404 that reveals nothing about which tenants exist."""

    def dispatch(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        message = "There is no portal at this address."
        if wants_json(request):
            return json_error(request, 404, "not_found", message)
        return render(request, "tenants/not_found.html", {"message": message}, status=404)
