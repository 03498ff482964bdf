"""Which wallet endpoints Stamp may call (``STAMP_WALLET_ENDPOINT_ALLOW``).

A wallet endpoint is a URL chosen by whoever registers a recipient, and Stamp POSTs
to it from inside the deployment's network: without a rule, any host Stamp can reach
is a target (SSRF). The allow-list names the destinations by host name pattern
(``wallet.example``, ``*.wallet.example``) and/or by network (``10.0.0.0/8``,
``fd00::/8``, a bare address). A URL passes when its host matches a name pattern, or
when every address it resolves to lies inside an allowed network. The rule is checked
when a recipient is created and again at every delivery, on the addresses the
connection is actually made to (DNS may have changed in between).

Pure functions and one async lookup; no HTTP client here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from yarl import URL

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NOT_ALLOWED = "the wallet endpoint's host is not allowed by this Stamp's STAMP_WALLET_ENDPOINT_ALLOW"
"""The one text for a refusal: never the addresses a name resolved to (an oracle of
the internal DNS)."""

REFUSED_AT_CREATION = (
    "names a host outside the wallet endpoints this Stamp may call (STAMP_WALLET_ENDPOINT_ALLOW)"
)
"""The message of a refused recipient, on the field ``walletEndpointReference.endpoint``."""

RESOLVE_TIMEOUT_SECONDS = 5.0


class EndpointNotAllowed(Exception):
    """The endpoint's host is outside the allow-list (deliberately not an OSError, so
    the HTTP client does not retry it as a DNS failure)."""

    def __init__(self) -> None:
        super().__init__(NOT_ALLOWED)


@dataclass(frozen=True, slots=True)
class EndpointAllowList:
    names: tuple[str, ...]  # exact names, lower case, no trailing dot
    suffixes: tuple[str, ...]  # from "*.x.y": ".x.y"
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, raw: str) -> EndpointAllowList:
        """Comma-separated items; raises ValueError naming every bad item."""
        names: list[str] = []
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        problems: list[str] = []
        for item in (part.strip() for part in raw.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=True))
                continue
            except ValueError as exc:
                if "/" in item or ":" in item or item.replace(".", "").isdigit():
                    problems.append(f"{item!r} is not a network: {exc}")
                    continue
            name = item.lower().rstrip(".")
            wildcard = name.startswith("*.")
            label_part = name[2:] if wildcard else name
            if not _is_host_name(label_part):
                problems.append(
                    f"{item!r} is not a host name, a '*.'-prefixed host name pattern, or a network"
                )
                continue
            (suffixes if wildcard else names).append("." + label_part if wildcard else label_part)
        if problems:
            raise ValueError("; ".join(problems))
        if not (names or suffixes or networks):
            raise ValueError("names no host pattern or network (leave it unset to allow every endpoint)")
        return cls(tuple(names), tuple(suffixes), tuple(networks))

    def describe(self) -> list[str]:
        return [*self.names, *("*" + s for s in self.suffixes), *(str(n) for n in self.networks)]

    def allows_name(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def allows_address(self, address: str | IPAddress) -> bool:
        try:
            ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1 on the wire
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        return any(ip.version == n.version and ip in n for n in self.networks)

    def allows_addresses(self, addresses: Iterable[str]) -> bool:
        """All of them allowed (and at least one): a name that also points elsewhere is
        not trusted."""
        found = list(addresses)
        return bool(found) and all(self.allows_address(a) for a in found)


def endpoint_host(url: str) -> str | None:
    """The host the HTTP client will connect to, as it parses the URL."""
    try:
        return URL(url).host
    except (ValueError, TypeError):
        return None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def check_endpoint(allow: EndpointAllowList | None, url: str) -> bool:
    """Whether the allow-list lets Stamp call ``url`` now (names are resolved)."""
    if allow is None:
        return True
    host = endpoint_host(url)
    if not host:
        return False
    if allow.allows_name(host):
        return True
    if is_ip_literal(host):
        return allow.allows_address(host)
    if not allow.networks:
        return False
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_SECONDS
        )
    except (OSError, TimeoutError, UnicodeError):
        return False  # an allow-list admits only what it can check
    return allow.allows_addresses(str(info[4][0]) for info in infos)


def _is_host_name(name: str) -> bool:
    labels = name.split(".")
    return (
        0 < len(name) <= 253
        and all(0 < len(label) <= 63 for label in labels)
        and all(all(c.isalnum() or c in "-_" for c in label) for label in labels)
        and all(c.isascii() for c in name)
        and not any(label.startswith("-") or label.endswith("-") for label in labels)
        and not labels[-1].isdigit()  # 10.0.0.256 is a mistyped address, not a name
    )
