"""Who may read `/metrics`: a scraper with the bearer token, or one inside the allowed networks.

The metrics name every tenant, so this is platform-operator data: one rule, checked before anything is read.
"""

import hmac
import ipaddress
from functools import cache

from django.conf import settings
from django.http import HttpRequest

from apps.api.client_ip import client_ip

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@cache
def _networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip())


def _token_matches(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return False
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


def _address_allowed(request: HttpRequest) -> bool:
    # Through a proxy the portal was not told about (TRUSTED_PROXY_COUNT=0), REMOTE_ADDR is the proxy's own
    # address, often loopback: trusting it would open the metrics to whoever the proxy serves.
    if not settings.AXES_IPWARE_PROXY_COUNT and "HTTP_X_FORWARDED_FOR" in request.META:
        return False
    try:
        address = ipaddress.ip_address(client_ip(request) or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d
    cidrs = settings.METRICS_ALLOWED_NETWORKS
    if isinstance(cidrs, str):
        cidrs = cidrs.split(",")
    return any(address in network for network in _networks(tuple(cidrs)))


def scrape_allowed(request: HttpRequest) -> bool:
    """Either credential suffices; the token compare takes the same time whatever the guess."""
    return _token_matches(request) or _address_allowed(request)
