"""The root of the SDK's exception hierarchy, in a module with no imports so
that any module (validation.py included, should it want to) can derive from it
without an import cycle through errors.py."""

from __future__ import annotations


class PinrankError(Exception):
    """Base of every error the pinrank SDK raises.

    `status` is the transport's status when the error came from the server
    (e.g. "StatusCode.UNAVAILABLE" for gRPC, "503" for HTTP), else None;
    `raw_message` is the server's message before the SDK tidied it.
    """

    def __init__(self, message: str, *, status: str | None = None, raw_message: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.raw_message = raw_message if raw_message is not None else message

    def __str__(self) -> str:
        return self.message
