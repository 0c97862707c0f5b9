"""Platform staff on the public host: they sign in on the admin's login page (the public host has no other)
and pass the second factor on the same pages as a tenant's staff."""

from django.test import Client
from django_tenants.utils import get_public_schema_name, schema_context

from tests.helpers import PASSWORD, current_totp_code


def platform_login(client: Client, user) -> Client:
    """Password sign-in through the admin's login view (axes and all), as a browser would: the form carries `next`."""
    response = client.post("/admin/login/", {"username": user.email, "password": PASSWORD, "next": "/admin/"})
    assert response.status_code == 302, response.content[:500]
    return client


def platform_otp_login(client: Client, user) -> Client:
    """`tests.helpers.otp_login` for the public host: sign in, then verify with the user's authenticator (one is
    made if they have none yet)."""
    platform_login(client, user)
    with schema_context(get_public_schema_name()):
        code = current_totp_code(user)
    response = client.post("/account/two-factor/verify/", {"code": code, "next": "/admin/"})
    assert response.status_code == 302, response.content[:500]
    return client
