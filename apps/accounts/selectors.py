"""Reads on members and roles."""

from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts.models import User
from apps.accounts.roles import Role


def user_role(user: User) -> Role | None:
    """The member's role, from their single role group (uses prefetched groups when present)."""
    for group in user.groups.all():
        if group.name in Role.values:
            return Role(group.name)
    return None


def member_list() -> QuerySet[User]:
    return User.objects.prefetch_related("groups").order_by("email")


def member_get(*, member_id: int) -> User:
    """Members exist only in the current tenant's schema: another tenant's id is simply not found."""
    return get_object_or_404(User, pk=member_id)


def active_owner_count() -> int:
    return User.objects.filter(is_active=True, groups__name=Role.OWNER.value).count()


def member_counts() -> dict[str, int]:
    """Members per role and in total, in one query."""
    aggregates = {role.value: Count("pk", filter=Q(groups__name=role.value), distinct=True) for role in Role}
    row = User.objects.aggregate(
        total=Count("pk", distinct=True),
        active=Count("pk", filter=Q(is_active=True), distinct=True),
        **aggregates,
    )
    return row


def second_factor_required(user: User) -> bool:
    """Whoever may open an admin must use a second factor there (and, in a tenant, in the reports).

    In a tenant that is the staff roles; in the public schema it is platform staff, whose admin holds every tenant.
    """
    return bool(user.is_active and user.is_staff)


def totp_device_get(*, user: User, confirmed: bool | None = None) -> TOTPDevice | None:
    """The member's authenticator app (one per member); `confirmed=False` is an enrolment not yet finished."""
    devices = TOTPDevice.objects.filter(user=user).order_by("-pk")
    if confirmed is not None:
        devices = devices.filter(confirmed=confirmed)
    return devices.first()


def recovery_codes_left(*, user: User) -> int:
    return StaticToken.objects.filter(device__user=user, device__confirmed=True).count()


def second_factor_enrolled(*, user: User) -> bool:
    """Whether the member holds any second-factor device, confirmed or still being enrolled."""
    return TOTPDevice.objects.filter(user=user).exists() or StaticDevice.objects.filter(user=user).exists()
