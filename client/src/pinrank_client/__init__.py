"""pinrank-client: the thin SDK for the pinrank ranking service.

    from pinrank_client import RankingClient, Action

    with RankingClient("localhost:8001") as client:
        response = client.rank(42, [101, 102, 103], [Action(7, "save", ts_ms)], top_k=2)

Importing this package is cheap and never imports tritonclient, torch or the
`pinrank` server package; the clients import tritonclient when created.
"""

from pinrank_client import errors, schema
from pinrank_client._client_base import Health
from pinrank_client._retry import RetryEvent, RetryPolicy
from pinrank_client._url import Endpoint, parse_url, parse_urls
from pinrank_client.admin import ADMIN_HEADER, ADMIN_KEY_ENV, admin_headers
from pinrank_client.aio import AsyncRankingClient
from pinrank_client.client import RankingClient
from pinrank_client.errors import (
    AccessDeniedError,
    InvalidArgumentError,
    InvalidRequestError,
    ModelNotReadyError,
    PinrankError,
    RequestTimeoutError,
    ServerError,
    ServerUnavailableError,
)
from pinrank_client.types import Action, ActionHistory, ModelStats, RankedItem, RankRequest, RankResponse
from pinrank_client.validation import validate_request

__all__ = [
    "schema",
    "errors",
    "validate_request",
    "RankingClient",
    "AsyncRankingClient",
    "Health",
    "RetryPolicy",
    "RetryEvent",
    "Endpoint",
    "parse_url",
    "parse_urls",
    "Action",
    "ActionHistory",
    "RankRequest",
    "RankedItem",
    "RankResponse",
    "ModelStats",
    "PinrankError",
    "InvalidRequestError",
    "InvalidArgumentError",
    "ServerUnavailableError",
    "RequestTimeoutError",
    "ModelNotReadyError",
    "ServerError",
    "AccessDeniedError",
    "admin_headers",
    "ADMIN_HEADER",
    "ADMIN_KEY_ENV",
]
__version__ = "0.2.0"
