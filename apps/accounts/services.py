"""Writes on members and roles. Every change names its actor, so the audit log can say who did it."""

import logging
import math
from dataclasses import dataclass, field

import django_otp
from auditlog.context import set_actor, set_extra_data
from auditlog.models import LogEntry
from django.apps import apps as django_apps
from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice
from django_tenants.utils import get_public_schema_name

from apps.accounts.models import User
from apps.accounts.roles import ROLE_PERMISSIONS, STAFF_ROLES, Role
from apps.accounts.selectors import active_owner_count, second_factor_required, totp_device_get, user_role
from apps.compliance.models import AccessEvent
from apps.compliance.services import access_event_from_request

platform_logger = logging.getLogger("apps.accounts.platform")


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


# --- Second factor ---------------------------------------------------------------------------------


class SecondFactorRefused(ValidationError):
    """A second-factor action the member may not take now (enrol twice, or regenerate codes unverified)."""


@dataclass(frozen=True)
class SecondFactorResult:
    """The outcome of one code: `wait_seconds` > 0 when the device refused to look at it (throttled)."""

    verified: bool
    wait_seconds: int = 0
    recovery_codes: list[str] = field(default_factory=list)


def _code_check(device: Device, code: str) -> SecondFactorResult:
    """One try against one device, inside the caller's locked transaction; wrong codes lengthen the wait."""
    allowed, info = device.verify_is_allowed()
    if not allowed:
        wait = (info["locked_until"] - timezone.now()).total_seconds() if info and "locked_until" in info else 1
        return SecondFactorResult(verified=False, wait_seconds=max(1, math.ceil(wait)))
    return SecondFactorResult(verified=device.verify_token(code))


def _recovery_codes_replace(user: User) -> list[str]:
    """Fresh recovery codes; the old ones stop working. Audit-logged as token rows, never with their value."""
    device, _ = StaticDevice.objects.get_or_create(user=user, defaults={"name": "Recovery codes", "confirmed": True})
    for token in device.token_set.all():
        token.delete()
    codes = [StaticToken.random_token() for _ in range(settings.RECOVERY_CODE_COUNT)]
    for code in codes:
        StaticToken.objects.create(device=device, token=code)
    return codes


def _sign_in_event(request, *, reason: str, user_id: int, detail: str = "") -> None:
    """Audit one second-factor event: an access event in a tenant, a log line on the public host.

    Access events live in tenant schemas only (the public schema has no table for them), and a sign-in changes
    no row, so it does not belong in the audit log of changes either; the device rows themselves are there on
    both hosts. Platform staff's events are one INFO line of `apps.accounts.platform`, always worded
    `Platform second factor: <reason> ...`, for the platform's log collection to keep and alert on.
    """
    if connection.schema_name != get_public_schema_name():
        access_event_from_request(request, reason=reason, user_id=user_id, detail=detail)
        return
    from apps.api.client_ip import client_ip

    platform_logger.info(
        "Platform second factor: %s user=%s ip=%s path=%s request_id=%s detail=%r",
        reason,
        user_id,
        client_ip(request),
        request.path,
        getattr(request, "request_id", ""),
        detail,
    )


def _session_verify(request, device: Device, *, how: str) -> None:
    """Mark this session verified (a new session key, as at any privilege change) and audit the admin entry."""
    request.session.cycle_key()
    django_otp.login(request, device)
    _sign_in_event(request, reason=AccessEvent.Reason.ADMIN_LOGIN, user_id=device.user_id, detail=how)


def _refused(request, user: User, result: SecondFactorResult, *, kind: str) -> None:
    detail = f"{kind}, throttled for {result.wait_seconds}s" if result.wait_seconds else kind
    _sign_in_event(request, reason=AccessEvent.Reason.TOTP_FAILED, user_id=user.pk, detail=detail)


def _session_verified(user: User) -> bool:
    """Whether this request's session passed the second factor (django-otp's middleware sets `is_verified`)."""
    is_verified = getattr(user, "is_verified", None)
    return is_verified is not None and is_verified()


def totp_enrolment_start(*, user: User) -> TOTPDevice:
    """The pending authenticator to show; the same one on every reload, since the app may already hold its secret."""
    if not second_factor_required(user):
        raise SecondFactorRefused("Only owners and compliance officers use a second factor.", code="not_staff")
    if totp_device_get(user=user, confirmed=True) is not None:
        raise SecondFactorRefused("You already have an authenticator app.", code="already_enrolled")
    device = totp_device_get(user=user, confirmed=False)
    if device is None:
        with set_actor(user):
            device = TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=False)
    return device


def totp_enrolment_confirm(*, request, user: User, code: str) -> SecondFactorResult:
    """Confirm the pending authenticator with one code from it (proof the secret was copied).

    On success the session is verified and 10 recovery codes are returned, to be shown once.
    """
    code = "".join(code.split())
    with transaction.atomic(), set_actor(user):
        if TOTPDevice.objects.filter(user=user, confirmed=True).exists():
            raise SecondFactorRefused("You already have an authenticator app.", code="already_enrolled")
        device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=False).order_by("-pk").first()
        if device is None:
            raise SecondFactorRefused("Start the enrolment again.", code="no_pending_device")
        result = _code_check(device, code)
        if result.verified:
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            result = SecondFactorResult(verified=True, recovery_codes=_recovery_codes_replace(user))
    if not result.verified:
        _refused(request, user, result, kind="enrolment code")
        return result
    _sign_in_event(request, reason=AccessEvent.Reason.TOTP_ENROLLED, user_id=user.pk)
    _session_verify(request, device, how="enrolment")
    return result


def second_factor_verify(*, request, user: User, code: str) -> SecondFactorResult:
    """Verify this session with a code from the app or a recovery code (which is then used up).

    Six digits go to the app, anything else to the recovery codes, so a wrong code slows down only one of them.
    """
    code = "".join(code.split()).lower()
    totp = totp_device_get(user=user, confirmed=True)
    is_totp = totp is not None and code.isdigit() and len(code) == totp.digits
    model = TOTPDevice if is_totp else StaticDevice
    kind = "authenticator code" if is_totp else "recovery code"
    with transaction.atomic():
        device = model.objects.select_for_update().filter(user=user, confirmed=True).first()
        result = _code_check(device, code) if device is not None else SecondFactorResult(verified=False)
    if not result.verified:
        _refused(request, user, result, kind=kind)
        return result
    if not is_totp:
        left = device.token_set.count()
        _sign_in_event(request, reason=AccessEvent.Reason.RECOVERY_CODE_USED, user_id=user.pk, detail=f"{left} left")
    _session_verify(request, device, how=kind)
    return result


def recovery_codes_regenerate(*, actor: User) -> list[str]:
    """New recovery codes for a member whose session is verified now (a stolen password alone cannot do it)."""
    if not _session_verified(actor):
        raise SecondFactorRefused("Verify your second factor first.", code="not_verified")
    with transaction.atomic(), set_actor(actor):
        return _recovery_codes_replace(actor)


def _second_factor_reset(member: User, *, audit: dict) -> int:
    """Delete the member's authenticator and recovery codes, and say so in the audit log; returns devices removed.

    `audit` is the audit context: `actor` for a member, or `actor_email` naming an operator. Each device (and
    each recovery code with it) leaves its own delete entry, and one entry on the member says what happened, so
    the member's own history shows the reset and who did it. The member's verified sessions stop being
    verified at once: django-otp finds their device no more.
    """
    with transaction.atomic(), set_extra_data({**audit, "additional_data": {"action": "second_factor_reset"}}):
        member = User.objects.select_for_update().get(pk=member.pk)
        devices = [*TOTPDevice.objects.filter(user=member), *StaticDevice.objects.filter(user=member)]
        if not devices:
            raise SecondFactorRefused(f"{member.email} has no second factor to reset.", code="not_enrolled")
        for device in devices:
            device.delete()
        LogEntry.objects.log_create(
            member, action=LogEntry.Action.UPDATE, changes={"second factor": ["enrolled", "reset"]}
        )
    return len(devices)


def member_second_factor_reset(*, actor: User, member: User) -> int:
    """An owner removes another member's authenticator app and recovery codes, for a member who lost both.

    The member enrols a new authenticator at their next entry to the admin or the reports. Only from a session
    verified now, so a stolen owner password alone cannot strip anyone's second factor; never for oneself: an
    owner who still has their app renews recovery codes, and one who lost everything asks another owner, or the
    platform's operator (`manage.py reset_two_factor`).
    """
    _require_member_manager(actor)
    if not _session_verified(actor):
        raise SecondFactorRefused("Verify your second factor first.", code="not_verified")
    if member.pk == actor.pk:
        raise MemberActionRefused("You cannot reset your own second factor here.", code="self_reset")
    return _second_factor_reset(member, audit={"actor": actor})


def second_factor_reset_by_operator(*, member: User, operator: str) -> int:
    """The platform operator's reset, for a tenant's last owner who lost both the app and the recovery codes.

    Nobody in the tenant can do it then, so it runs from `manage.py reset_two_factor` in the member's schema;
    `operator` (who ran it, and why) becomes the audit entry's actor, since an operator is no user there.
    """
    return _second_factor_reset(member, audit={"actor_email": operator[:254]})
