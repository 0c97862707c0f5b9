from rest_framework.authentication import SessionAuthentication


class PortalSessionAuthentication(SessionAuthentication):
    """The browser portal's own calls: the session cookie, with CSRF enforced as DRF always does."""
