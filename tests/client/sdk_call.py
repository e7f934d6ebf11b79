"""One call on a fresh sync or async client, for tests that check both alike."""

from __future__ import annotations

import asyncio
from typing import Any

from pinrank_client import AsyncRankingClient, RankingClient


def call(flavour: str, url: str, method: str, *args: Any, method_kw: dict[str, Any] | None = None,
         **client_kw: Any) -> Any:
    """`method(*args, **method_kw)` on a new RankingClient ("sync") or
    AsyncRankingClient ("async") for `url`, closed afterwards; `client_kw`
    go to the client."""
    kw = method_kw or {}
    if flavour == "sync":
        with RankingClient(url, **client_kw) as client:
            return getattr(client, method)(*args, **kw)

    async def main() -> Any:
        async with AsyncRankingClient(url, **client_kw) as client:
            return await getattr(client, method)(*args, **kw)

    return asyncio.run(main())
