"""`pinrank-client`: rank, health, models and stats from the command line.

Every failure ends as one `error: ...` line on stderr and an exit code a
script can branch on; tracebacks are for bugs in this file, not for users.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from typing import IO, Any, Callable, NoReturn, TypeVar

import click

from pinrank_client import __version__, schema
from pinrank_client._args import MAX_SECONDS, check_seconds
from pinrank_client._triton import contract_mismatches
from pinrank_client._url import parse_urls
from pinrank_client.admin import ADMIN_KEY_ENV, admin_headers
from pinrank_client.client import DEFAULT_TIMEOUT_S, DEFAULT_URL, RankingClient
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
from pinrank_client.types import ModelStats, RankRequest, RankResponse

EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_INVALID = 2
EXIT_UNAVAILABLE = 3
EXIT_TIMEOUT = 4

F = TypeVar("F", bound=Callable[..., Any])


def _exit_code(exc: PinrankError) -> int:
    if isinstance(exc, (InvalidRequestError, InvalidArgumentError, AccessDeniedError)):
        return EXIT_INVALID
    if isinstance(exc, (ServerUnavailableError, ModelNotReadyError)):
        return EXIT_UNAVAILABLE
    if isinstance(exc, RequestTimeoutError):
        return EXIT_TIMEOUT
    return EXIT_SERVER_ERROR


_KIND = {
    InvalidRequestError: "invalid request",
    InvalidArgumentError: "invalid argument",
    ModelNotReadyError: "model not ready",
    AccessDeniedError: "access denied",
    ServerError: "server error",
}


def _describe(exc: PinrankError) -> str:
    # Unavailable/timeout messages already name the server; the others get a
    # category so "boom" reads as the server's failure, not the CLI's.
    for cls, kind in _KIND.items():
        if isinstance(exc, cls):
            return f"{kind}: {exc}"
    return str(exc)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Runs click in non-standalone mode so that every error, click's usage
    errors included, is reported the same way: one line, a known exit code."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name or "pinrank-client", complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            _fail(exc.format_message() + hint, EXIT_INVALID)
        except click.FileError as exc:
            _fail(exc.format_message(), EXIT_INVALID)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.exceptions.Abort:
            _fail("interrupted", 130)
        except PinrankError as exc:
            _fail(_describe(exc), _exit_code(exc))
        except ValueError as exc:  # bad --url and other argument checks
            _fail(str(exc), EXIT_INVALID)
        except Exception as exc:  # a bug here; still no traceback for the user
            _fail(f"unexpected {type(exc).__name__}: {exc}", EXIT_SERVER_ERROR)
        code = rv if isinstance(rv, int) else EXIT_OK
        if standalone_mode:
            sys.exit(code)
        return code


# Python's int() and float() also read "٣" as 3 and "1_000" as 1000: a typo
# or a pasted lookalike must fail, not send a different number.
_ASCII_INT = re.compile(r"[+-]?[0-9]+")
_ASCII_DECIMAL = re.compile(r"[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?")


def _ascii_int(text: str) -> int:
    """`text` as an int written in ASCII digits; ValueError otherwise."""
    if not _ASCII_INT.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not an integer in ASCII digits")
    return int(text)


class _Int(click.ParamType):
    """An integer option in ASCII digits, optionally >= `minimum`."""

    name = "integer"

    def __init__(self, minimum: int | None = None) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = _ascii_int(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if self.minimum is not None and number < self.minimum:
            self.fail(f"{number} is smaller than the minimum {self.minimum}", param, ctx)
        return number


class _Seconds(click.ParamType):
    """A duration in seconds: an ASCII decimal, finite, > 0 and at most a day."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        text = str(value).strip()
        if not isinstance(value, float) and not _ASCII_DECIMAL.fullmatch(text):
            self.fail(f"{text!r} is not a number of seconds (ASCII digits, e.g. 0.5)", param, ctx)
        try:
            return check_seconds("the value", float(text))
        except InvalidArgumentError:
            self.fail(f"{text} is not in (0, {MAX_SECONDS:g}] seconds", param, ctx)


def _connection_options(f: F) -> F:
    """--url, --protocol, --timeout, --retries: what every command takes."""
    options = [
        click.option(
            "--url",
            envvar="PINRANK_URL",
            default=DEFAULT_URL,
            show_default=True,
            help="Server: grpc://HOST:8001, http://HOST:8000, or HOST:PORT (gRPC unless --protocol http). "
            "Several, comma-separated, are used in turn with failover. Env: PINRANK_URL.",
        ),
        click.option("--protocol", type=click.Choice(["grpc", "http"]), help="Protocol, if the URL has no scheme."),
        click.option(
            "--timeout",
            "timeout_s",
            type=_Seconds(),
            default=DEFAULT_TIMEOUT_S,
            show_default=True,
            help="Deadline in seconds for each attempt (connect, send, compute and receive).",
        ),
        click.option(
            "--retries",
            type=_Int(minimum=0),
            default=2,
            show_default=True,
            help="Extra attempts (with backoff, or on the next server) while servers are unreachable.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


_model_option = click.option(
    "--model-name", "--model", "model_name", default=schema.ENSEMBLE_MODEL, show_default=True,
    help="Model to call (the SDK's model_name=; --model is the same option).",
)


def _server_options(f: F) -> F:
    """The connection options and --model, for the commands that call one model."""
    return _connection_options(_model_option(f))


def _client(
    url: str,
    protocol: str | None,
    timeout_s: float,
    retries: int,
    model_name: str,
    validate: bool = True,
    admin_key: str | None = None,
) -> RankingClient:
    headers = admin_headers(admin_key) if admin_key else None
    try:
        parse_urls(url, protocol)
    except InvalidArgumentError as exc:
        raise click.BadParameter(str(exc), param_hint="'--url'") from None
    # Anything else it refuses (--model, the admin key's characters) reads
    # as "invalid argument: <field> must be ...".
    return RankingClient(
        url, protocol, timeout_s=timeout_s, retries=retries, model_name=model_name, validate=validate,
        headers=headers,
    )


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@click.group(cls=_Group, name="pinrank-client", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pinrank-client")
def main() -> None:
    """Query the pinrank ranking service (the `pinrank` ensemble on Triton).

    \b
    Examples:
      pinrank-client health --url localhost:8001
      pinrank-client rank --user-id 42 --candidates 101,102,103 --top-k 2
      pinrank-client rank --url http://ranker-a:8000,http://ranker-b:8000 \\
          --request-file req.json --json
      pinrank-client models --json
      pinrank-client stats --url localhost:8001

    Run `pinrank-client COMMAND --help` for each command's options.

    \b
    Exit codes:
      0  success
      1  the server failed (or its interface differs from the schema)
      2  invalid input (bad flags, bad request file, request rejected,
         admin API called without the server's admin key)
      3  server unreachable, or the model is not loaded
      4  timed out
    """


# --- rank ---------------------------------------------------------------------


def _parse_candidates(text: str) -> list[int]:
    ids = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            ids.append(_ascii_int(part))
        except ValueError:
            raise InvalidRequestError(f"--candidates: {part!r} is not an integer item id") from None
    return ids


def _parse_action(text: str) -> dict[str, Any]:
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise InvalidRequestError(
            f"--action {text!r}: expected ITEM:TYPE:TS_MS[:SURFACE], e.g. 7:save:1718000000000:home"
        )
    try:
        item, ts = _ascii_int(parts[0]), _ascii_int(parts[2])
    except ValueError:
        raise InvalidRequestError(f"--action {text!r}: ITEM and TS_MS must be integers in ASCII digits") from None
    action: dict[str, Any] = {"item_id": item, "action": parts[1], "ts_ms": ts}
    if len(parts) == 4:
        action["surface"] = parts[3]
    return action


def _load_request_file(handle: IO[str]) -> dict[str, Any]:
    try:
        data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"--request-file {handle.name}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"--request-file {handle.name}: expected a JSON object, got {type(data).__name__}")
    return data


def _print_ranking(response: RankResponse, request: RankRequest) -> None:
    heads = "".join(f"  {h:>8}" for h in schema.HEADS)
    click.echo(f"{'rank':>4}  {'item_id':>12}  {'utility':>9}{heads}")
    for i, item in enumerate(response.items, 1):
        probs = "".join(f"  {item.head_probs[h]:>8.4f}" for h in schema.HEADS)
        utility = item.utility + 0.0  # prints -0.0 as 0.0
        click.echo(f"{i:>4}  {item.item_id:>12}  {utility:>9.4f}{probs}")
    version = f" v{response.model_version}" if response.model_version else ""
    click.echo(
        f"{len(response)} of {request.num_candidates} candidates ranked by {response.model_name}{version} "
        f"at {response.url} in {response.latency_ms:.2f} ms"
        + (f" after {response.attempts} attempts" if response.attempts > 1 else "")
    )


_REQUEST_FILE_HELP = """JSON request file ('-' reads stdin); flags override its fields."""


@main.command()
@_server_options
@click.option("--user-id", type=_Int(), help="User to rank for.")
@click.option("--candidates", metavar="ID,ID,...", help="Candidate item ids, comma-separated.")
@click.option(
    "--action",
    "actions",
    multiple=True,
    metavar="ITEM:TYPE:TS_MS[:SURFACE]",
    help=f"A recent action (repeatable). TYPE: {', '.join(schema.ACTIONS)} or id; "
    f"SURFACE: {', '.join(schema.SURFACES)} or id (0 = unknown).",
)
@click.option("--top-k", type=_Int(), help=f"Items to return (server default {schema.DEFAULT_TOP_K}).")
@click.option("--request-ts-ms", type=_Int(), help="Request time, unix ms (default: now).")
@click.option("--request-file", type=click.File("r"), help=_REQUEST_FILE_HELP)
@click.option(
    "--no-validate",
    "no_validate",
    is_flag=True,
    help="Skip the SDK's contract checks and let the server judge the request (for servers with other limits).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the response as JSON.")
def rank(
    url: str,
    protocol: str | None,
    timeout_s: float,
    retries: int,
    model_name: str,
    user_id: int | None,
    candidates: str | None,
    actions: tuple[str, ...],
    top_k: int | None,
    request_ts_ms: int | None,
    request_file: IO[str] | None,
    no_validate: bool,
    as_json: bool,
) -> int:
    """Rank candidate items for one user.

    \b
    Examples:
      pinrank-client rank --user-id 42 --candidates 101,102,103 \\
          --action 7:save:1718000000000:home --action 9:click:1718000050000 --top-k 2
      pinrank-client rank --url http://localhost:8000 --request-file req.json --json

    \b
    Request file (JSON; request_ts_ms defaults to now, top_k to the server's):
      {"user_id": 42,
       "candidate_ids": [101, 102, 103],
       "actions": [{"item_id": 7, "action": "save",
                    "ts_ms": 1718000000000, "surface": "home"}],
       "request_ts_ms": 1718000060000,
       "top_k": 10}
    The history may instead be given as parallel columns: "action_item_ids",
    "action_types", "action_ts_ms" and optional "action_surfaces" (types and
    surfaces as names or ids).
    """
    data = _load_request_file(request_file) if request_file is not None else {}
    if user_id is not None:
        data["user_id"] = user_id
    if candidates is not None:
        data["candidate_ids"] = _parse_candidates(candidates)
    if actions:
        for column in ("action_item_ids", "action_types", "action_surfaces", "action_ts_ms"):
            data.pop(column, None)
        data["actions"] = [_parse_action(a) for a in actions]
    if top_k is not None:
        data["top_k"] = top_k
    if request_ts_ms is not None:
        data["request_ts_ms"] = request_ts_ms
    if "user_id" not in data or "candidate_ids" not in data:
        if request_file is not None:
            RankRequest.from_dict(data, validate=False)  # names a misspelt or missing field of the file
        raise InvalidRequestError("give --user-id and --candidates (or a --request-file holding them)")
    request = RankRequest.from_dict(data, validate=not no_validate)
    with _client(url, protocol, timeout_s, retries, model_name, validate=not no_validate) as client:
        response = client.rank_request(request)
    if as_json:
        _echo_json(response.to_dict())
    else:
        _print_ranking(response, request)
    return EXIT_OK


# --- health -------------------------------------------------------------------


@main.command()
@_server_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def health(url: str, protocol: str | None, timeout_s: float, retries: int, model_name: str, as_json: bool) -> int:
    """Check the server: exit 0 if the model is ready, else 3.

    With several comma-separated --url values every server is checked, the
    exit code is 0 if the model is ready on at least one, and --json prints a
    list with one object per server instead of one object.
    """
    with _client(url, protocol, timeout_s, retries, model_name) as client:
        statuses = client.health_all()
    several = len(statuses) > 1
    if as_json:
        rows = [dataclasses.asdict(s) for s in statuses]
        _echo_json(rows if several else rows[0])
    else:
        yes = {True: "yes", False: "no"}
        for i, status in enumerate(statuses):
            if status.error is not None and not several:
                continue  # the error line below says it all
            if i:
                click.echo("")
            click.echo(f"server        {status.url}")
            if status.error is not None:
                click.echo(f"live          no  ({status.error})")
                continue
            click.echo(f"live          {yes[status.live]}")
            click.echo(f"server ready  {yes[status.server_ready]}  (every model in the repository loaded)")
            click.echo(f"model ready   {yes[status.model_ready]}  ({model_name})")
    if any(s.model_ready for s in statuses):
        return EXIT_OK
    unreachable = [s for s in statuses if s.error is not None]
    if len(unreachable) == len(statuses):
        _fail("; ".join(s.error or "" for s in unreachable), EXIT_UNAVAILABLE)
    where = ", ".join(s.url for s in statuses if s.error is None)
    _fail(f"model {model_name!r} is not ready at {where}", EXIT_UNAVAILABLE)


# --- models -------------------------------------------------------------------


@main.command()
@_server_options
@click.option(
    "--admin-key",
    envvar=ADMIN_KEY_ENV,
    metavar="KEY",
    help=f"The server's admin key: its model listing is restricted (`pinrank serve` prints where the key is). "
    f"Prefer the env var {ADMIN_KEY_ENV}: a flag shows up in the process list.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
def models(
    url: str,
    protocol: str | None,
    timeout_s: float,
    retries: int,
    model_name: str,
    admin_key: str | None,
    as_json: bool,
) -> int:
    """List the server's models and check the ranking model's interface
    against this SDK's schema (exit 1 if they differ, 3 if it is not loaded,
    2 if the listing needs the admin key; the interface is checked anyway)."""
    denied: str | None = None
    with _client(url, protocol, timeout_s, retries, model_name, admin_key=admin_key) as client:
        try:
            index: list[dict[str, str]] | None = client.list_models()
        except AccessDeniedError as exc:
            index, denied = None, str(exc)
        metadata: dict[str, Any] | None = None
        not_ready: str | None = None
        try:
            metadata = client.model_metadata()
        except ModelNotReadyError as exc:
            not_ready = str(exc)
    problems = [] if metadata is None else _contract(metadata)
    if as_json:
        _echo_json({"models": index, "model": metadata, "contract_problems": problems, "model_error": not_ready})
    elif index is not None:
        width = max([len(m["name"]) for m in index] + [5])
        click.echo(f"{'model':<{width}}  {'version':>7}  {'state':<12}  reason")
        for m in index:
            reason = m["reason"].strip().splitlines()[0] if m["reason"].strip() else ""
            click.echo(f"{m['name']:<{width}}  {m['version']:>7}  {m['state']:<12}  {reason}")
    if not as_json:
        if metadata is not None and not problems:
            click.echo(
                f"contract: {model_name} matches schema v{schema.SCHEMA_VERSION} "
                f"({len(metadata['inputs'])} inputs, {len(metadata['outputs'])} outputs)"
            )
        for problem in problems:
            click.echo(f"contract: {problem}")
    if not_ready is not None:
        _fail(f"model not ready: {not_ready}", EXIT_UNAVAILABLE)
    if problems:
        _fail(
            f"{model_name} differs from schema v{schema.SCHEMA_VERSION} ({len(problems)} problem(s))", EXIT_SERVER_ERROR
        )
    if denied is not None:
        _fail(
            f"access denied: {denied}; the model listing needs the server's admin key "
            f"(set {ADMIN_KEY_ENV} or pass --admin-key)",
            EXIT_INVALID,
        )
    return EXIT_OK


def _contract(metadata: dict[str, Any]) -> list[str]:
    return contract_mismatches(metadata)


# --- stats --------------------------------------------------------------------

# The ensemble's steps in the order a request goes through them.
_STEPS = (schema.PREPROCESS_MODEL, schema.RANKER_MODEL, schema.POSTPROCESS_MODEL)


def _pipeline_key(s: ModelStats) -> tuple[int, str, int, str]:
    """Sorts the ensemble first, then its steps in pipeline order, then any other model by name."""
    order = (schema.ENSEMBLE_MODEL, *_STEPS)
    rank = order.index(s.model) if s.model in order else len(order)
    version = int(s.version) if s.version.isascii() and s.version.isdigit() else -1
    return rank, s.model, version, s.version


def _print_stats(stats: list[ModelStats]) -> None:
    width = max([len(s.model) for s in stats] + [5])
    times = "".join(f"  {t:>9}" for t in ("queue ms", "input ms", "infer ms", "output ms", "total ms"))
    click.echo(f"{'model':<{width}}  {'version':>7}  {'requests':>10}  {'failures':>8}{times}")
    for s in stats:
        means = (s.queue_ms, s.compute_input_ms, s.compute_infer_ms, s.compute_output_ms, s.total_ms)
        click.echo(
            f"{s.model:<{width}}  {s.version:>7}  {s.requests:>10}  {s.failures:>8}"
            + "".join(f"  {m:>9.3f}" for m in means)
        )
    click.echo(f"mean per successful request since the server started, from {stats[0].url}")


@main.command()
@_connection_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per model, instead of a table.")
def stats(url: str, protocol: str | None, timeout_s: float, retries: int, as_json: bool) -> int:
    """Show each model's request counts and mean time per request.

    One row per model on the server: the `pinrank` ensemble, timed from a
    request's arrival to its response, then each of its steps (preprocess,
    ranker, postprocess). Counts are cumulative since the server started.

    \b
    Columns:
      requests   successful requests
      failures   failed requests
      queue ms   waiting for a model instance
      input ms   preparing the inputs (e.g. copying them to the GPU)
      infer ms   running the model
      output ms  extracting the outputs
      total ms   arrival to response

    Times are means per successful request, in milliseconds. For a step the
    four phases add up to about the total; for the ensemble they need not,
    and its steps' rows show where the time went. A step may count more
    requests than the ensemble (warm-up requests at load count too). --json
    adds `executions` (fewer than requests when the server batches them) and
    `url`.

    The statistics API needs no admin key. With several comma-separated
    --url values one server answers (the last line names it): give one --url
    to read a particular server's.

    \b
    Examples:
      pinrank-client stats --url localhost:8001
      pinrank-client stats --url http://localhost:8000 --json
    """
    with _client(url, protocol, timeout_s, retries, schema.ENSEMBLE_MODEL) as client:
        rows = sorted(client.stats(), key=_pipeline_key)
    if as_json:
        _echo_json([s.to_dict() for s in rows])
    elif rows:
        _print_stats(rows)
    else:
        click.echo(f"no models are loaded at {client.url}")
    return EXIT_OK
