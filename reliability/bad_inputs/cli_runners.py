"""Both command lines run in-process, as a user would see them: the exit code
and everything printed. Apart from the case model because the fixtures export
their repository with `pinrank export` too."""

from __future__ import annotations

import traceback
from typing import Mapping, Sequence

from click.testing import CliRunner

from pinrank.cli import main as pinrank_main
from pinrank_client import cli as client_cli


def run_pinrank(args: Sequence[object], env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """`pinrank ARGS` in-process: (exit code, everything it printed)."""
    result = CliRunner().invoke(pinrank_main, [str(a) for a in args], env=dict(env or {}))
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(result.exception))  # an uncaught error is never clear
    return result.exit_code, text


def run_client_cli(args: Sequence[object], env: Mapping[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(client_cli.main, [str(a) for a in args], env=dict(env or {}))
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(result.exception))
    return result.exit_code, text
