"""pinrank-client: the thin SDK for the pinrank ranking service."""

from pinrank_client import schema
from pinrank_client.validation import InvalidRequestError, validate_request

__all__ = ["schema", "InvalidRequestError", "validate_request"]
__version__ = "0.1.0"
