"""Checks for the SDK's own arguments (durations, counts, model names,
headers), as opposed to the request's fields, which types.py and
validation.py check. Each failure is an InvalidArgumentError that names the
argument, raised before anything is sent: left to the transports, these
values fail later and obscurely (a gRPC deadline of 1e18 s expires at once,
time.sleep(1e300) overflows, an upper-case gRPC header is "Invalid metadata").
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Mapping

from pinrank_client.errors import InvalidArgumentError

#: Longest duration any SDK argument takes (a day). Far beyond any sensible
#: deadline or backoff, and far below where gRPC's deadline arithmetic and
#: time.sleep overflow.
MAX_SECONDS = 86_400.0

# RFC 9110 token: what a header name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Printable ASCII: what both an HTTP/1.1 header value and a gRPC text
# metadata value accept (no CR/LF, so no header injection either).
_HEADER_VALUE = re.compile(r"[ -~]*")
# A Triton model name as the SDK sends it: printable ASCII without spaces or
# slashes, which would change the URL path over HTTP.
_MODEL_NAME = re.compile(r"[!-.0-~]+")


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """`value` as float seconds: finite, > 0 (>= 0 if `allow_zero`), at most MAX_SECONDS."""
    low = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"{name} must be a number of seconds {low}, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero) or seconds > MAX_SECONDS:
        raise InvalidArgumentError(
            f"{name} must be a finite number of seconds {low} and at most {MAX_SECONDS:g}, got {value!r}"
        )
    return seconds


def check_int(name: str, value: object, *, minimum: int) -> int:
    """`value` as an int >= `minimum`; bools and floats are refused, not truncated."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, got {int(value)}")
    return int(value)


def check_model(model_name: object, model_version: object) -> tuple[str, str]:
    """(name, version) as tritonclient wants them; version "" = the server's choice."""
    if not isinstance(model_name, str) or not _MODEL_NAME.fullmatch(model_name) or model_name in (".", ".."):
        raise InvalidArgumentError(
            f"model_name must be a model's name (printable ASCII, no spaces or slashes), got {model_name!r}"
        )
    if isinstance(model_version, numbers.Integral) and not isinstance(model_version, bool):
        model_version = str(int(model_version))
    if not isinstance(model_version, str) or not (
        model_version == "" or (model_version.isascii() and model_version.isdigit())
    ):
        raise InvalidArgumentError(
            f"model_version must be a version number such as '1', or '' for the server's choice, got {model_version!r}"
        )
    return model_name, model_version


def check_headers(headers: object) -> dict[str, str] | None:
    """Extra request headers, names lower-cased (gRPC metadata must be; HTTP does not care)."""
    if headers is None:
        return None
    if not isinstance(headers, Mapping):
        raise InvalidArgumentError(f"headers must be a mapping of header names to strings, got {headers!r}")
    out: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not _HEADER_NAME.fullmatch(key):
            raise InvalidArgumentError(f"headers: {key!r} is not a valid header name")
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            # The value is not echoed: headers carry keys and tokens.
            what = "a string with a line break or a character outside printable ASCII"
            raise InvalidArgumentError(
                f"headers[{key!r}] must be a string of printable ASCII (no line breaks), got "
                + (what if isinstance(value, str) else type(value).__name__)
            )
        out[key.lower()] = value
    return out or None
