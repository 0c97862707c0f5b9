"""Sign-ins land in the tenant's access events next to the refused API requests, so an officer sees in one
list who logged in, who failed to, and from where. Only buffered here (one Redis push, no query); in the
public schema there is no tenant to record them in, and `access_event_record` drops them."""

from typing import Any

from django.http import HttpRequest

from apps.compliance.models import AccessEvent
from apps.compliance.services import access_event_from_request, access_event_record


def record_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """`user_logged_in`: a successful password login, through the portal's or the admin's login form."""
    if request is None or not request.method:  # e.g. the test client's force_login: no real request
        access_event_record(reason=AccessEvent.Reason.LOGIN, method="", path="", client_ip=None, user_id=user.pk)
        return
    access_event_from_request(request, reason=AccessEvent.Reason.LOGIN, user_id=user.pk)


def record_login_failed(sender: Any, credentials: dict, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """`user_login_failed`: the name tried is kept (the password never reaches the signal unmasked)."""
    username = str(credentials.get("username") or credentials.get("email") or "")[:150]
    detail = f"username: {username}" if username else ""
    if request is None or not request.method:
        access_event_record(reason=AccessEvent.Reason.LOGIN_FAILED, method="", path="", client_ip=None, detail=detail)
        return
    access_event_from_request(request, reason=AccessEvent.Reason.LOGIN_FAILED, detail=detail)
