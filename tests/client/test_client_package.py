"""Packaging promises: a light import, and the public API in one place."""

import subprocess
import sys

import pinrank_client


def test_import_pulls_in_neither_torch_nor_the_server_nor_tritonclient():
    code = (
        "import sys, pinrank_client, pinrank_client.cli;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'pinrank', 'tritonclient', 'grpc', 'aiohttp')];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_public_api():
    for name in (
        "RankingClient",
        "AsyncRankingClient",
        "Action",
        "ActionHistory",
        "RankRequest",
        "RankedItem",
        "RankResponse",
        "PinrankError",
        "InvalidRequestError",
        "ServerUnavailableError",
        "RequestTimeoutError",
        "ModelNotReadyError",
        "ServerError",
        "schema",
        "validate_request",
        "errors",
    ):
        assert name in pinrank_client.__all__ and hasattr(pinrank_client, name), name
