"""Writes on members and roles. Every change names its actor, so the audit log can say who did it."""

from auditlog.context import set_actor
from django.apps import apps as django_apps
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from apps.accounts.models import User
from apps.accounts.roles import ROLE_PERMISSIONS, STAFF_ROLES, Role
from apps.accounts.selectors import active_owner_count, user_role


class MemberActionRefused(ValidationError):
    """A member change that would break a rule (such as leaving a tenant without an owner)."""


def role_groups_sync() -> None:
    """Create the role groups and give each exactly its permissions (idempotent)."""
    for app_config in django_apps.get_app_configs():
        create_permissions(app_config, verbosity=0)
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role.value)
        perms = []
        for dotted in codenames:
            app_label, codename = dotted.split(".")
            perms.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        group.permissions.set(perms)


def role_groups_sync_after_migrate(sender, **kwargs) -> None:
    role_groups_sync()


def _require_member_manager(actor: User | None) -> None:
    if actor is not None and not actor.has_perm("accounts.manage_members"):
        raise PermissionDenied("Only owners can manage members.")


def _role_apply(user: User, role: Role) -> None:
    user.is_staff = role in STAFF_ROLES
    user.save(update_fields=["is_staff"])
    user.groups.set([Group.objects.get(name=role.value)])


def user_create(*, actor: User | None, email: str, password: str | None, role: str, full_name: str = "") -> User:
    """Create a member with one role. `password=None` leaves it unusable until an invitation is accepted."""
    role = Role(role)
    _require_member_manager(actor)
    email = email.strip().lower()
    if User.objects.filter(email__iexact=email).exists():
        raise MemberActionRefused("A member with this email already exists.", code="email_taken")
    with transaction.atomic(), set_actor(actor):
        user = User.objects.create_user(email=email, password=password, full_name=full_name, invited_by=actor)
        _role_apply(user, role)
    return user


def invitation_accept_path(user: User) -> str:
    uidb64 = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    return reverse("invitation_accept", kwargs={"uidb64": uidb64, "token": token})


def member_invite(*, actor: User, email: str, role: str, full_name: str = "") -> User:
    """Create the member without a password and email them a link to choose one (sent by a worker)."""
    from apps.accounts.tasks import send_invitation_email

    with transaction.atomic():
        user = user_create(actor=actor, email=email, password=None, role=role, full_name=full_name)
        transaction.on_commit(lambda: send_invitation_email.delay(user_id=user.pk, actor_id=actor.pk))
    return user


def member_change_role(*, actor: User, member: User, role: str) -> User:
    role = Role(role)
    _require_member_manager(actor)
    with transaction.atomic(), set_actor(actor):
        member = User.objects.select_for_update().get(pk=member.pk)
        if user_role(member) == Role.OWNER and role != Role.OWNER and active_owner_count() <= 1:
            raise MemberActionRefused("A tenant keeps at least one active owner.", code="last_owner")
        _role_apply(member, role)
    _forget_keys_of(member)
    return member


def member_set_active(*, actor: User, member: User, active: bool) -> User:
    """Deactivate (the member can no longer log in; history stays) or reactivate a member."""
    _require_member_manager(actor)
    with transaction.atomic(), set_actor(actor):
        member = User.objects.select_for_update().get(pk=member.pk)
        if not active:
            if member.pk == actor.pk:
                raise MemberActionRefused("You cannot deactivate yourself.", code="self_deactivate")
            if user_role(member) == Role.OWNER and active_owner_count() <= 1:
                raise MemberActionRefused("A tenant keeps at least one active owner.", code="last_owner")
        member.is_active = active
        member.save(update_fields=["is_active"])
    _forget_keys_of(member)
    return member


def _forget_keys_of(member: User) -> None:
    """Keys carry their owner's state in the auth cache; a deactivation or new role must be seen at once."""
    from apps.apikeys.services import apikeys_forget_owner

    apikeys_forget_owner(owner=member)
