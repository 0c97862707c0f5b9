"""A lost authenticator: an owner with a verified session resets another member's second factor from the
members page (audited with the owner as actor); the last owner, whom nobody in the tenant can help, is reset by
the platform's operator with `manage.py reset_two_factor`."""

import pytest
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.management import CommandError, call_command
from django.test import Client
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice
from django_tenants.utils import get_public_schema_name, schema_context, tenant_context

from apps.accounts.models import User
from apps.accounts.services import SecondFactorRefused, _recovery_codes_replace, member_second_factor_reset
from tests.helpers import PASSWORD, host_of, login, otp_login
from tests.platform_staff import platform_login

MADE_UP_ID = 987_654


def reset_url(member) -> str:
    return f"/account/two-factor/members/{member.pk}/reset/"


def enrolled(tenant, member) -> None:
    """Give the member a confirmed authenticator and recovery codes, as enrolment leaves them."""
    with tenant_context(tenant):
        TOTPDevice.objects.create(user=member, name="Authenticator app", confirmed=True)
        _recovery_codes_replace(member)


def devices_of(tenant, member) -> tuple[int, int, int]:
    with tenant_context(tenant):
        return (
            TOTPDevice.objects.filter(user_id=member.pk).count(),
            StaticDevice.objects.filter(user_id=member.pk).count(),
            StaticToken.objects.filter(device__user_id=member.pk).count(),
        )


def reset_entries(tenant, member) -> list[LogEntry]:
    """The audit entries on the member themselves (not on their devices) that record a reset."""
    with tenant_context(tenant):
        entries = LogEntry.objects.filter(
            content_type=ContentType.objects.get_for_model(User), object_pk=str(member.pk)
        ).filter(changes__has_key="second factor")
        return list(entries.select_related("actor"))


def fresh(tenant) -> Client:
    return Client(HTTP_HOST=host_of(tenant))


# --- an owner resets a member -------------------------------------------------------------------------------


def test_an_owner_resets_a_members_second_factor_and_the_member_enrols_again(client_a, cast):
    enrolled(cast.tenant_a, cast.olivia)
    otp_login(client_a, cast.alice)

    confirm = client_a.get(reset_url(cast.olivia))
    assert confirm.status_code == 200
    assert b"Reset second factor" in confirm.content
    assert b"10 recovery codes left" in confirm.content
    assert devices_of(cast.tenant_a, cast.olivia) == (1, 1, 10)  # asking changed nothing

    response = client_a.post(reset_url(cast.olivia), follow=True)

    assert response.redirect_chain[-1][0] == "/members/"
    assert b"olivia@alpha.example enrols a new authenticator app" in response.content
    assert devices_of(cast.tenant_a, cast.olivia) == (0, 0, 0)
    [entry] = reset_entries(cast.tenant_a, cast.olivia)
    assert entry.actor_id == cast.alice.pk
    assert entry.changes_dict == {"second factor": ["enrolled", "reset"]}
    assert entry.additional_data == {"action": "second_factor_reset"}
    with tenant_context(cast.tenant_a):
        device_type = ContentType.objects.get_for_model(TOTPDevice)
        deleted = LogEntry.objects.filter(content_type=device_type, action=LogEntry.Action.DELETE)
        assert [e.actor_id for e in deleted] == [cast.alice.pk]
    member = login(fresh(cast.tenant_a), cast.olivia)
    assert member.get("/admin/", follow=True).redirect_chain[-1][0] == "/account/two-factor/?next=%2Fadmin%2F"


def test_a_reset_ends_the_verification_of_the_members_open_sessions(client_a, cast):
    member = otp_login(fresh(cast.tenant_a), cast.olivia)
    assert member.get("/admin/").status_code == 200
    otp_login(client_a, cast.alice)

    client_a.post(reset_url(cast.olivia))

    assert member.get("/admin/", follow=True).redirect_chain[-1][0] == "/account/two-factor/?next=%2Fadmin%2F"


def test_the_members_page_offers_the_reset_for_staff_but_not_for_oneself(client_a, cast):
    otp_login(client_a, cast.alice)

    page = client_a.get("/members/").content.decode()

    assert reset_url(cast.olivia) in page
    assert reset_url(cast.alice) not in page
    assert reset_url(cast.dave) not in page  # developers use no second factor


def test_an_owner_cannot_reset_their_own_second_factor(client_a, cast):
    otp_login(client_a, cast.alice)
    enrolled(cast.tenant_a, cast.alice)  # recovery codes besides the app otp_login made

    page = client_a.get(reset_url(cast.alice))
    response = client_a.post(reset_url(cast.alice), follow=True)

    assert b"You cannot reset your own second factor here" in page.content
    assert b"You cannot reset your own second factor here." in response.content
    assert devices_of(cast.tenant_a, cast.alice)[0] == 2
    assert reset_entries(cast.tenant_a, cast.alice) == []


def test_an_owner_must_verify_their_own_second_factor_first(client_a, cast):
    enrolled(cast.tenant_a, cast.olivia)
    login(client_a, cast.alice)

    response = client_a.post(reset_url(cast.olivia))

    assert response.status_code == 302
    assert response["Location"].startswith("/account/two-factor/?next=")
    assert devices_of(cast.tenant_a, cast.olivia) == (1, 1, 10)
    assert reset_entries(cast.tenant_a, cast.olivia) == []


def test_the_service_refuses_an_unverified_actor(in_tenant_a, cast):
    enrolled(cast.tenant_a, cast.olivia)

    with pytest.raises(SecondFactorRefused):
        member_second_factor_reset(actor=cast.alice, member=cast.olivia)  # no request, so no verified session

    assert devices_of(cast.tenant_a, cast.olivia) == (1, 1, 10)


@pytest.mark.parametrize("actor", ["olivia", "dave", "victor"])
def test_members_who_are_not_owners_are_refused(client_a, cast, actor):
    enrolled(cast.tenant_a, cast.alice)
    user = getattr(cast, actor)
    if user.is_staff:
        otp_login(client_a, user)
    else:
        login(client_a, user)

    assert client_a.get(reset_url(cast.alice)).status_code == 403
    assert client_a.post(reset_url(cast.alice)).status_code == 403
    assert devices_of(cast.tenant_a, cast.alice) == (1, 1, 10)
    assert reset_entries(cast.tenant_a, cast.alice) == []


def test_anonymous_visitors_are_sent_to_sign_in(client_a, cast):
    enrolled(cast.tenant_a, cast.olivia)

    response = client_a.post(reset_url(cast.olivia))

    assert response["Location"].startswith("/login/?next=")
    assert devices_of(cast.tenant_a, cast.olivia) == (1, 1, 10)


def test_a_member_of_another_tenant_is_not_found_like_a_made_up_id(client_a, cast):
    with tenant_context(cast.tenant_b):
        # An id that exists in bravo and not in alpha; bravo's own sequence may well repeat alpha's ids.
        outsider = User.objects.create_user(email="bob@bravo.example", password=PASSWORD, pk=MADE_UP_ID + 1)
        outsider.is_staff = True
        outsider.save()
    enrolled(cast.tenant_b, outsider)
    otp_login(client_a, cast.alice)

    for url in (reset_url(outsider), f"/account/two-factor/members/{MADE_UP_ID}/reset/"):
        assert client_a.get(url).status_code == 404
        assert client_a.post(url).status_code == 404
    assert devices_of(cast.tenant_b, outsider) == (1, 1, 10)
    assert reset_entries(cast.tenant_b, outsider) == []


def test_there_is_nothing_to_reset_for_a_member_without_a_second_factor(client_a, cast):
    otp_login(client_a, cast.alice)

    page = client_a.get(reset_url(cast.olivia))
    response = client_a.post(reset_url(cast.olivia), follow=True)

    assert b"there is nothing to reset" in page.content
    assert b"olivia@alpha.example has no second factor to reset." in response.content
    assert reset_entries(cast.tenant_a, cast.olivia) == []


def test_recovery_codes_still_renew_after_a_reset_and_a_new_enrolment(client_a, cast):
    """The member who still has their app needs no reset: they renew their codes themselves."""
    otp_login(fresh(cast.tenant_a), cast.olivia)
    otp_login(client_a, cast.alice)
    client_a.post(reset_url(cast.olivia))

    member = otp_login(fresh(cast.tenant_a), cast.olivia)  # a new authenticator, as a new enrolment leaves it
    response = member.post("/account/two-factor/recovery-codes/")

    assert response.status_code == 200
    assert len(response.context["codes"]) == 10


# --- the operator resets the last owner ----------------------------------------------------------------------


def test_the_operator_resets_the_last_owner_of_a_tenant(cast, capsys):
    enrolled(cast.tenant_b, cast.charlie)

    call_command("reset_two_factor", schema="bravo", email="Charlie@Bravo.example", reason="ticket 4711")

    assert "charlie@bravo.example in bravo: removed 2 device(s)" in capsys.readouterr().out
    assert devices_of(cast.tenant_b, cast.charlie) == (0, 0, 0)
    [entry] = reset_entries(cast.tenant_b, cast.charlie)
    assert entry.actor is None
    assert "manage.py reset_two_factor" in entry.actor_email
    assert entry.actor_email.endswith(": ticket 4711")
    client = login(fresh(cast.tenant_b), cast.charlie)
    assert client.get("/admin/", follow=True).redirect_chain[-1][0] == "/account/two-factor/?next=%2Fadmin%2F"


def test_the_operator_resets_platform_staff_in_the_public_schema(public_client):
    with schema_context(get_public_schema_name()):
        staff = User.objects.create_superuser("ops@platform.example", PASSWORD)
        TOTPDevice.objects.create(user=staff, name="Authenticator app", confirmed=True)

    call_command("reset_two_factor", schema="public", email=staff.email)

    with schema_context(get_public_schema_name()):
        assert not TOTPDevice.objects.filter(user=staff).exists()
    platform_login(public_client, staff)
    assert public_client.get("/admin/", follow=True).redirect_chain[-1][0] == "/account/two-factor/?next=%2Fadmin%2F"


@pytest.mark.parametrize(
    ("schema", "email", "message"),
    [
        ("nowhere", "charlie@bravo.example", "no tenant with schema 'nowhere'"),
        ("bravo", "alice@alpha.example", "no member 'alice@alpha.example' in schema 'bravo'"),
        ("alpha", "dave@alpha.example", "dave@alpha.example has no second factor to reset."),
    ],
)
def test_the_operator_command_refuses_what_it_cannot_find(cast, schema, email, message):
    enrolled(cast.tenant_b, cast.charlie)

    with pytest.raises(CommandError, match=message):
        call_command("reset_two_factor", schema=schema, email=email)

    assert devices_of(cast.tenant_b, cast.charlie) == (1, 1, 10)
