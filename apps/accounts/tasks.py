"""Per-tenant background work; each task runs inside the schema of the tenant that sent it."""

from auditlog.context import set_actor
from celery import shared_task
from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.mail import send_mail
from django.db import connection
from django.utils import timezone

from apps.accounts.models import User


@shared_task
def send_invitation_email(*, user_id: int, actor_id: int | None) -> None:
    """Email the invitation link and record when it went out (audited with the inviter as actor)."""
    from apps.accounts.services import invitation_accept_path
    from apps.tenants.services import tenant_url

    user = User.objects.get(pk=user_id)
    actor = User.objects.filter(pk=actor_id).first() if actor_id else None
    link = tenant_url(connection.tenant, invitation_accept_path(user))
    send_mail(
        subject=f"You are invited to {connection.tenant.name} on the AI PaaS portal",
        message=f"{actor or 'An owner'} invited you. Choose your password here: {link}\n",
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[user.email],
    )
    with set_actor(actor):
        user.invitation_sent_at = timezone.now()
        user.save(update_fields=["invitation_sent_at"])


@shared_task
def clear_expired_sessions() -> int:
    deleted, _ = Session.objects.filter(expire_date__lt=timezone.now()).delete()
    return deleted
