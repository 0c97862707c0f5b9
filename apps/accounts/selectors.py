"""Reads on members and roles."""

from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404

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
