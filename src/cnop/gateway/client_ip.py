"""Who the client is: the peer, or what a trusted proxy says in `X-Forwarded-For`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network


def _parse_ip(text: str) -> IPv4Address | IPv6Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """Decides the client's address: the peer, or `X-Forwarded-For` when the peer is a trusted proxy."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks = tuple(ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())
        # Peers are few (the proxies themselves), so remembering answers makes the check free.
        self.trusts: Callable[[str], bool] = lru_cache(maxsize=4096)(self._trusts)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def _trusts(self, host: str) -> bool:
        address = _parse_ip(host)
        return address is not None and any(address in network for network in self._networks)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str:
        """Walk `X-Forwarded-For` from the right past trusted proxies; the first other hop is the client."""
        if peer is None:
            return "unknown"
        if not self._networks or forwarded_for is None or not self.trusts(peer):
            return peer
        client = peer
        for hop in reversed(forwarded_for.split(",")):
            address = _parse_ip(hop)
            if address is None:
                # A hop no proxy would write: stop at the last address a trusted proxy vouched for.
                return client
            client = str(address)
            if not self.trusts(client):
                return client
        return client
