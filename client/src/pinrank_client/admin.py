"""The admin key that guards a pinrank server's model-control APIs.

`pinrank serve` starts Triton with its restricted-API options: the model
repository (index, load, unload), model config, shared-memory, trace and
logging APIs answer only requests that carry the header ADMIN_HEADER with the
server's key. Health, metadata, statistics and inference stay open, so
ranking clients need no key.
"""

from __future__ import annotations

from pinrank_client.errors import InvalidArgumentError

#: Header that carries the key (HTTP). Triton's gRPC endpoint expects the
#: same header under GRPC_HEADER_PREFIX.
ADMIN_HEADER = "pinrank-admin-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
#: Environment variable the server and `pinrank-client models` read the key from.
ADMIN_KEY_ENV = "PINRANK_ADMIN_KEY"


def admin_headers(key: str) -> dict[str, str]:
    """Headers that unlock the restricted APIs over HTTP and gRPC alike.

    Both spellings go out so one dict serves either protocol (each endpoint
    ignores the other's); pass it as `headers=` to tritonclient or the SDK.
    """
    if not key:
        raise InvalidArgumentError("empty admin key")
    return {ADMIN_HEADER: key, GRPC_HEADER_PREFIX + ADMIN_HEADER: key}
