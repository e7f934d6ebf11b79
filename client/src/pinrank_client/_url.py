"""Where the server is and how to talk to it, from one URL string."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence
from urllib.parse import urlsplit

from pinrank_client.errors import InvalidArgumentError

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
# A gateway's path prefix (http://gw/triton): plain segments only, so that
# nothing in it can change the route tritonclient appends.
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
# The root of Triton's own API, which tritonclient appends itself:
# http://host:8000/v2 would call /v2/v2/..., which no server answers.
_API_ROOT = "v2"


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
    A missing port means Triton's default for the protocol. An HTTP URL may
    carry a gateway's path prefix (`http://gw/triton`), but not Triton's own
    `/v2` routes, which the SDK adds. Raises InvalidArgumentError (a
    ValueError) naming what is wrong: a scheme that contradicts an explicit
    `protocol`, a path, query, fragment or credentials where none belong, a
    bad host or port.
    """
    if protocol is not None:
        if not isinstance(protocol, str):
            raise InvalidArgumentError(f"protocol must be a string ('grpc' or 'http'), got {protocol!r}")
        protocol = protocol.strip().lower()
        if protocol not in PROTOCOLS:
            raise InvalidArgumentError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if not isinstance(url, str):
        raise InvalidArgumentError(f"a server URL must be a string, got {type(url).__name__} {url!r}")
    text = url.strip()
    if not text:
        raise InvalidArgumentError("empty server URL")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise InvalidArgumentError(f"server URL {url!r} contains whitespace or control characters")
    has_scheme = "://" in text
    parts = urlsplit(text if has_scheme else f"//{text}")
    if has_scheme:
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise InvalidArgumentError(
                f"unsupported URL scheme {scheme!r} in {url!r}; use one of {', '.join(_SCHEMES)}"
            )
        proto, ssl = _SCHEMES[scheme]
        if protocol is not None and protocol != proto:
            raise InvalidArgumentError(f"URL {url!r} says {proto} but protocol={protocol!r} was given")
    else:
        proto, ssl = ("http" if protocol == "http" else "grpc"), False
    if "@" in parts.netloc:
        raise InvalidArgumentError(
            f"server URL {url!r} holds credentials, which the SDK does not send; pass headers= instead"
        )
    if not parts.hostname:
        raise InvalidArgumentError(f"no host in server URL {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidArgumentError(f"bad port in server URL {url!r}: {exc}") from None
    if port == 0:
        raise InvalidArgumentError(f"bad port in server URL {url!r}: port 0 is not a server's port")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise InvalidArgumentError(f"server URLs take no query or fragment: {url!r}")
    path = _checked_path(url, parts.path, proto)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    address = f"{host}:{port if port is not None else DEFAULT_PORTS[(proto, ssl)]}{path}"
    return Endpoint(proto, address, ssl)


def _checked_path(url: str, raw: str, proto: Protocol) -> str:
    path = raw.rstrip("/")
    if not path:
        return ""
    if proto == "grpc":
        raise InvalidArgumentError(f"gRPC server URLs take no path: {url!r}; give grpc://HOST:PORT")
    segments = path.split("/")[1:]
    if _API_ROOT in segments:
        raise InvalidArgumentError(
            f"server URL {url!r} includes Triton's API path /{_API_ROOT}, which the SDK adds itself: "
            f"give the server's root (http://HOST:PORT) or a gateway's prefix without /{_API_ROOT}"
        )
    if not all(_PATH_SEGMENT.fullmatch(segment) and segment not in (".", "..") for segment in segments):
        raise InvalidArgumentError(
            f"server URL {url!r} has a path that is not a plain prefix such as /triton "
            "(letters, digits and ._~- between slashes, no . or ..)"
        )
    return path


def parse_urls(urls: str | Sequence[str], protocol: str | None = None) -> list[Endpoint]:
    """Parse one URL, a comma-separated list ("h1:8001,h2:8001") or a sequence
    of URLs into distinct Endpoints, in the order given.

    Every endpoint must speak the same protocol: a client builds one kind of
    tensor object (gRPC or HTTP) and a mixed list is almost always a typo.
    """
    if isinstance(urls, str):
        if not urls.strip():
            raise InvalidArgumentError("empty server URL")
        items: list[object] = list(urls.split(","))
    elif isinstance(urls, Sequence) and not isinstance(urls, (bytes, bytearray)):
        items = list(urls)
    else:
        raise InvalidArgumentError(
            f"server URLs must be a string or a list of strings, got {type(urls).__name__} {urls!r}"
        )
    endpoints: list[Endpoint] = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidArgumentError(f"server URLs must be strings, got {type(item).__name__} {item!r}")
        if not item.strip():
            raise InvalidArgumentError(f"empty server URL in {urls!r}")
        endpoint = parse_url(item, protocol)
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    if not endpoints:
        raise InvalidArgumentError("no server URL given")
    protocols = sorted({e.protocol for e in endpoints})
    if len(protocols) > 1:
        raise InvalidArgumentError(
            f"all server URLs must use one protocol, got {', '.join(protocols)}: {', '.join(e.url for e in endpoints)}"
        )
    return endpoints
