"""Where the server is and how to talk to it, from one URL string."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence
from urllib.parse import urlsplit

Protocol = Literal["grpc", "http"]
PROTOCOLS: tuple[Protocol, ...] = ("grpc", "http")

# Triton's default ports; TLS endpoints usually sit behind a proxy on 443.
DEFAULT_PORTS: dict[tuple[Protocol, bool], int] = {
    ("grpc", False): 8001,
    ("http", False): 8000,
    ("grpc", True): 443,
    ("http", True): 443,
}
_SCHEMES: dict[str, tuple[Protocol, bool]] = {
    "grpc": ("grpc", False),
    "grpcs": ("grpc", True),
    "http": ("http", False),
    "https": ("http", True),
}


@dataclass(frozen=True)
class Endpoint:
    """A parsed server address; `address` is what tritonclient wants (no scheme)."""

    protocol: Protocol
    address: str
    ssl: bool = False

    @property
    def url(self) -> str:
        scheme = {"grpc": "grpc", "http": "http"}[self.protocol] + ("s" if self.ssl else "")
        return f"{scheme}://{self.address}"


def parse_url(url: str, protocol: str | None = None) -> Endpoint:
    """Parse `url` into an Endpoint.

    The scheme picks the protocol (`http://`, `https://` -> HTTP; `grpc://`,
    `grpcs://` -> gRPC); a bare `host[:port]` uses `protocol`, else gRPC.
    A missing port means Triton's default for the protocol. Raises ValueError
    for a scheme that contradicts an explicit `protocol`, or anything unparsable.
    """
    if protocol is not None:
        protocol = protocol.strip().lower()
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    text = url.strip()
    if not text:
        raise ValueError("empty server URL")
    has_scheme = "://" in text
    parts = urlsplit(text if has_scheme else f"//{text}")
    if has_scheme:
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}; use one of {', '.join(_SCHEMES)}")
        proto, ssl = _SCHEMES[scheme]
        if protocol is not None and protocol != proto:
            raise ValueError(f"URL {url!r} says {proto} but protocol={protocol!r} was given")
    else:
        proto, ssl = ("http" if protocol == "http" else "grpc"), False
    if not parts.hostname:
        raise ValueError(f"no host in server URL {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in server URL {url!r}: {exc}") from None
    path = parts.path.rstrip("/")
    if path and proto == "grpc":
        raise ValueError(f"gRPC server URLs take no path: {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"server URLs take no query or fragment: {url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    address = f"{host}:{port if port is not None else DEFAULT_PORTS[(proto, ssl)]}{path}"
    return Endpoint(proto, address, ssl)


def parse_urls(urls: str | Sequence[str], protocol: str | None = None) -> list[Endpoint]:
    """Parse one URL, a comma-separated list ("h1:8001,h2:8001") or a sequence
    of URLs into distinct Endpoints, in the order given.

    Every endpoint must speak the same protocol: a client builds one kind of
    tensor object (gRPC or HTTP) and a mixed list is almost always a typo.
    """
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    if isinstance(urls, str) and not urls.strip():
        raise ValueError("empty server URL")
    endpoints: list[Endpoint] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"server URLs must be strings, got {item!r}")
        if not item.strip():
            raise ValueError(f"empty server URL in {urls!r}")
        endpoint = parse_url(item, protocol)
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    if not endpoints:
        raise ValueError("no server URL given")
    protocols = sorted({e.protocol for e in endpoints})
    if len(protocols) > 1:
        raise ValueError(
            f"all server URLs must use one protocol, got {', '.join(protocols)}: {', '.join(e.url for e in endpoints)}"
        )
    return endpoints
