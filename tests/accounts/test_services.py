"""Members and roles: real permissions, audited changes with their actor, and the owner rules."""

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django_tenants.utils import tenant_context

from apps.accounts import services
from apps.accounts.models import User
from apps.accounts.roles import ROLE_PERMISSIONS, Role
from apps.accounts.selectors import member_counts, user_role


def _entries_for(user: User) -> list[LogEntry]:
    return list(LogEntry.objects.get_for_object(user).order_by("timestamp", "pk"))


def test_every_role_is_a_group_with_exactly_its_permissions(in_tenant_a):
    for role, codenames in ROLE_PERMISSIONS.items():
        group = Group.objects.get(name=role.value)
        granted = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()}
        assert granted == set(codenames)


def test_roles_give_real_permissions(cast, in_tenant_a):
    assert cast.alice.has_perm("accounts.manage_members")
    assert not cast.dave.has_perm("accounts.manage_members")
    assert cast.olivia.has_perm("auditlog.view_logentry")
    assert not cast.victor.has_perm("auditlog.view_logentry")


def test_owner_invites_a_member_and_the_audit_log_names_the_owner(
    cast, in_tenant_a, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        member = services.member_invite(actor=cast.alice, email="New.Dev@Alpha.example", role="developer")
    assert member.email == "new.dev@alpha.example"
    assert not member.has_usable_password()
    assert user_role(member) == Role.DEVELOPER
    assert len(callbacks) == 1  # the invitation email goes out through a worker after commit
    entries = _entries_for(member)
    assert entries[0].action == LogEntry.Action.CREATE
    assert {entry.actor_id for entry in entries} == {cast.alice.pk}
    assert any(entry.action == LogEntry.Action.UPDATE and "groups" in str(entry.changes) for entry in entries)


def test_developer_cannot_invite_and_nothing_changes(cast, in_tenant_a):
    before = User.objects.count(), LogEntry.objects.count()
    with pytest.raises(PermissionDenied):
        services.member_invite(actor=cast.dave, email="sneaky@alpha.example", role="owner")
    assert (User.objects.count(), LogEntry.objects.count()) == before


def test_invite_refuses_a_duplicate_email(cast, in_tenant_a):
    with pytest.raises(ValidationError):
        services.member_invite(actor=cast.alice, email="DAVE@alpha.example", role="viewer")


def test_same_email_in_another_tenant_is_another_person(cast, in_tenant_b):
    member = services.user_create(actor=cast.charlie, email="dave@alpha.example", password=None, role="viewer")
    assert member.pk is not None
    with tenant_context(cast.tenant_a):
        assert user_role(User.objects.get(email="dave@alpha.example")) == Role.DEVELOPER


def test_change_role_is_audited_with_its_actor(cast, in_tenant_a):
    services.member_change_role(actor=cast.alice, member=cast.victor, role="developer")
    victor = User.objects.get(pk=cast.victor.pk)
    assert user_role(victor) == Role.DEVELOPER
    last = _entries_for(victor)[-1]
    assert last.actor_id == cast.alice.pk
    assert "groups" in str(last.changes)


def test_compliance_officer_role_opens_the_admin_and_viewer_does_not(cast, in_tenant_a):
    services.member_change_role(actor=cast.alice, member=cast.victor, role="compliance_officer")
    assert User.objects.get(pk=cast.victor.pk).is_staff
    services.member_change_role(actor=cast.alice, member=cast.victor, role="viewer")
    assert not User.objects.get(pk=cast.victor.pk).is_staff


def test_last_owner_cannot_be_demoted_or_deactivated(cast, in_tenant_b):
    with pytest.raises(ValidationError) as error:
        services.member_change_role(actor=cast.charlie, member=cast.charlie, role="viewer")
    assert error.value.code == "last_owner"
    other = services.user_create(actor=cast.charlie, email="x@bravo.example", password=None, role="owner")
    with pytest.raises(ValidationError):
        services.member_set_active(actor=other, member=other, active=False)
    services.member_set_active(actor=other, member=cast.charlie, active=False)
    assert not User.objects.get(pk=cast.charlie.pk).is_active


def test_deactivation_is_audited(cast, in_tenant_a):
    services.member_set_active(actor=cast.alice, member=cast.dave, active=False)
    last = _entries_for(cast.dave)[-1]
    assert last.actor_id == cast.alice.pk
    assert "is_active" in last.changes_dict


def test_audit_entries_stay_in_the_tenant_schema(cast, in_tenant_a):
    services.member_change_role(actor=cast.alice, member=cast.victor, role="developer")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM bravo.auditlog_logentry WHERE object_repr = %s", ["victor@alpha.example"])
        assert cursor.fetchone()[0] == 0
        cursor.execute("SELECT count(*) FROM public.auditlog_logentry WHERE object_repr = %s", ["victor@alpha.example"])
        assert cursor.fetchone()[0] == 0


def test_member_counts_by_role_in_one_query(cast, in_tenant_a, django_assert_num_queries):
    # Two statements: django-tenants' `SET search_path` and the one aggregate.
    with django_assert_num_queries(2):
        counts = member_counts()
    assert counts["owner"] == 1
    assert counts["developer"] == 1
    assert counts["compliance_officer"] == 1
    assert counts["viewer"] == 1
    assert counts["active"] == 4
