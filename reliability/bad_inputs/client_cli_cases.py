"""Client CLI cases: malformed request files and flags, an unreachable
server, and what the server itself rejects, each with its exit code."""

from __future__ import annotations

from pathlib import Path

from pinrank.backend import schema
from reliability.bad_inputs.case import REQ_TS, Case, Context
from reliability.bad_inputs.helpers import client_case, closed_port


def _request_file(ctx: Context, name: str, text: str) -> Path:
    path = ctx.scratch(name) / "request.json"
    path.write_text(text)
    return path


def client_cli_cases() -> list[Case]:
    grpc = lambda ctx: ["--url", f"grpc://{ctx.grpc_url}", "--timeout", "30", "--retries", "0"]  # noqa: E731
    many = ",".join(str(i) for i in range(1, schema.MAX_CANDIDATES + 2))
    return [
        Case("client_cli_bad_json_file", "client_cli", "request file is not JSON",
             client_case(lambda ctx: ["rank", *grpc(ctx), "--request-file",
                                       _request_file(ctx, "cli_bad_json", '{"user_id": 1, "candidate_ids": [1,')], 2),
             ("exit 2:", "not valid JSON")),
        Case("client_cli_json_not_object", "client_cli", "request file holds a list",
             client_case(lambda ctx: ["rank", *grpc(ctx), "--request-file",
                                       _request_file(ctx, "cli_json_list", "[1, 2, 3]")], 2),
             ("exit 2:", "expected a JSON object")),
        Case("client_cli_unknown_request_field", "client_cli", "request file with a misspelt field",
             client_case(lambda ctx: ["rank", *grpc(ctx), "--request-file", _request_file(
                 ctx, "cli_field", '{"user_id": 1, "candidates": [7, 14]}')], 2),
             ("exit 2:", "unknown request field", "candidates")),
        Case("client_cli_non_integer_candidate", "client_cli", "--candidates 7,x",
             client_case(lambda ctx: ["rank", *grpc(ctx), "--user-id", "1", "--candidates", "7,x"], 2),
             ("exit 2:", "--candidates", "'x'")),
        Case("client_cli_bad_action_format", "client_cli", "--action without a timestamp",
             client_case(lambda ctx: ["rank", *grpc(ctx), "--user-id", "1", "--candidates", "7",
                                       "--action", "7:save"], 2),
             ("exit 2:", "--action", "ITEM:TYPE:TS_MS")),
        Case("client_cli_missing_user", "client_cli", "no --user-id",
             client_case(lambda ctx: ["rank", *grpc(ctx), "--candidates", "7,14"], 2),
             ("exit 2:", "--user-id")),
        Case("client_cli_bad_url", "client_cli", "--url with an unsupported scheme",
             client_case(lambda ctx: ["health", "--url", "ftp://127.0.0.1:1"], 2),
             ("exit 2:", "--url", "ftp")),
        Case("client_cli_zero_timeout", "client_cli", "--timeout 0",
             client_case(lambda ctx: ["health", *grpc(ctx)[:2], "--timeout", "0"], 2),
             ("exit 2:", "--timeout")),
        Case("client_cli_unreachable", "client_cli", "nothing listens at --url",
             client_case(lambda ctx: ["rank", "--url", f"grpc://127.0.0.1:{closed_port()}", "--retries", "0",
                                       "--user-id", "1", "--candidates", "7", "--request-ts-ms", str(REQ_TS)], 3),
             ("exit 3:", "unavailable")),
        Case("client_cli_server_rejects_unvalidated", "client_cli",
             "--no-validate with 1001 candidates: the server's check answers",
             client_case(lambda ctx: ["rank", *grpc(ctx), "--no-validate", "--user-id", "1",
                                       "--candidates", many, "--request-ts-ms", str(REQ_TS)], 2),
             ("exit 2:", "invalid request", "too many candidates")),
        Case("client_cli_models_without_admin_key", "client_cli", "model listing without the admin key",
             client_case(lambda ctx: ["models", *grpc(ctx)], 2, env={"PINRANK_ADMIN_KEY": ""}),
             ("exit 2:", "access denied", "PINRANK_ADMIN_KEY")),
    ]
