"""The portal pages: login, dashboard, members, invitations, roles, login throttling."""

import re

import pytest
from axes.models import AccessAttempt, AccessLog
from django.conf import settings
from django.test import Client

from apps.accounts.models import User
from apps.accounts.roles import Role
from apps.accounts.selectors import user_role
from tests.helpers import PASSWORD, host_of, login, otp_login


def test_dashboard_shows_tenant_name_and_member_counts(client_a, cast):
    response = login(client_a, cast.dave).get("/")
    assert response.status_code == 200
    assert b"Alpha Inc" in response.content
    assert re.search(rb'id="count-members">4<', response.content)


def test_members_page_lists_the_tenants_members(client_a, cast):
    response = login(client_a, cast.victor).get("/members/")
    assert response.status_code == 200
    for user in (cast.alice, cast.dave, cast.olivia, cast.victor):
        assert user.email.encode() in response.content
    assert b"Send invitation" not in response.content  # a viewer cannot manage members


def test_owner_invites_a_member_who_accepts_and_logs_in(
    client_a, cast, in_tenant_a, mailoutbox, django_capture_on_commit_callbacks
):
    login(client_a, cast.alice)
    with django_capture_on_commit_callbacks(execute=False):
        response = client_a.post("/members/", {"email": "ivy@alpha.example", "role": "developer"}, follow=True)
    assert response.status_code == 200
    assert b"Invited ivy@alpha.example" in response.content
    link = re.search(rb"(/invitation/[^/]+/[^/]+/)", response.content).group(1).decode()

    invitee = Client(HTTP_HOST=host_of(cast.tenant_a))
    form = invitee.get(link, follow=True)
    assert b"Choose a password" in form.content
    accepted = invitee.post(form.redirect_chain[-1][0], {"new_password1": PASSWORD, "new_password2": PASSWORD})
    assert accepted.status_code == 302
    assert invitee.post("/login/", {"username": "ivy@alpha.example", "password": PASSWORD}).status_code == 302
    assert invitee.get(link, follow=True).context["validlink"] is False  # one use only


def test_invalid_invitation_form_answers_400_and_creates_nobody(client_a, cast, in_tenant_a):
    login(client_a, cast.alice)
    before = User.objects.count()
    response = client_a.post("/members/", {"email": "not-an-email", "role": "developer"})
    assert response.status_code == 400
    assert User.objects.count() == before


@pytest.mark.parametrize("member", ["dave", "olivia", "victor"])
def test_only_owners_can_invite_change_roles_or_deactivate(client_a, cast, in_tenant_a, member):
    login(client_a, getattr(cast, member))
    before = User.objects.count()
    assert client_a.post("/members/", {"email": "x@alpha.example", "role": "owner"}).status_code == 403
    assert client_a.post(f"/members/{cast.victor.pk}/role/", {"role": "owner"}).status_code == 403
    assert client_a.post(f"/members/{cast.alice.pk}/active/", {"active": "0"}).status_code == 403
    assert User.objects.count() == before
    assert user_role(User.objects.get(pk=cast.victor.pk)) == Role.VIEWER
    assert User.objects.get(pk=cast.alice.pk).is_active


def test_owner_changes_a_role_and_deactivates_a_member(client_a, cast, in_tenant_a):
    login(client_a, cast.alice)
    client_a.post(f"/members/{cast.victor.pk}/role/", {"role": "developer"})
    assert user_role(User.objects.get(pk=cast.victor.pk)) == Role.DEVELOPER
    client_a.post(f"/members/{cast.dave.pk}/active/", {"active": "0"})
    assert not User.objects.get(pk=cast.dave.pk).is_active
    assert (
        Client(HTTP_HOST=host_of(cast.tenant_a))
        .post("/login/", {"username": cast.dave.email, "password": PASSWORD})
        .status_code
        == 200
    )  # login form redisplayed: a deactivated member cannot log in


def test_last_owner_protection_shows_a_message(client_a, cast, in_tenant_a):
    login(client_a, cast.alice)
    response = client_a.post(f"/members/{cast.alice.pk}/role/", {"role": "viewer"}, follow=True)
    assert b"at least one active owner" in response.content
    assert user_role(User.objects.get(pk=cast.alice.pk)) == Role.OWNER


def test_officer_reads_the_audit_trail_in_the_admin_and_developer_cannot_open_it(client_a, cast):
    otp_login(client_a, cast.olivia)
    assert client_a.get("/admin/auditlog/logentry/").status_code == 200
    assert client_a.get("/admin/accounts/user/").status_code == 200
    developer = login(Client(HTTP_HOST=host_of(cast.tenant_a)), cast.dave)
    assert developer.get("/admin/auditlog/logentry/").status_code == 302  # to the admin login


def test_repeated_failed_logins_are_throttled_and_recorded(client_a, cast, in_tenant_a):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client_a.post("/login/", {"username": cast.dave.email, "password": "wrong-password"})
    locked = client_a.post("/login/", {"username": cast.dave.email, "password": PASSWORD})
    assert locked.status_code == 429
    assert b"Too many failed logins" in locked.content
    attempt = AccessAttempt.objects.get(username=cast.dave.email)
    assert attempt.failures_since_start >= settings.AXES_FAILURE_LIMIT


def test_successful_logins_are_recorded(client_a, cast, in_tenant_a):
    login(client_a, cast.dave)
    assert AccessLog.objects.filter(username=cast.dave.email).exists()
