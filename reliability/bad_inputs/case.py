"""The case model: what a case is, what it produced, where it runs, and how
its answer is judged."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

from reliability.bad_inputs.fixtures import Fixtures

SURFACES: tuple[str, ...] = (
    "sdk", "client_cli", "pinrank_cli", "grpc_raw", "http_raw", "importer", "config", "checkpoint",
)
#: Request time of every case (2026-01-01 UTC); actions lie before it.
REQ_TS = 1_767_225_600_000


@dataclass(frozen=True)
class Outcome:
    """What a case produced: the error text a user would see, or a response."""

    error: str | None = None
    served: bool = False
    problem: str | None = None  # for served cases: how the response broke the contract


@dataclass
class Context:
    """Where cases run: a live server's URLs (host:port) and a scratch dir."""

    http_url: str
    grpc_url: str
    workdir: Path

    @cached_property
    def fixtures(self) -> Fixtures:
        return Fixtures(self.workdir / "fixtures")

    def scratch(self, name: str) -> Path:
        path = self.workdir / "cases" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


@dataclass(frozen=True)
class Case:
    id: str
    surface: str
    problem: str
    perform: Callable[[Context], Outcome]
    expect: tuple[str, ...] = ()
    served: bool = False
    forbid: tuple[str, ...] = ("Traceback",)

    def judge(self, outcome: Outcome) -> bool:
        """Clear = the expected answer: a correct ranking for served cases,
        else an error holding every `expect` substring (any case) and no
        `forbid` one."""
        if self.served:
            return outcome.served and outcome.problem is None and outcome.error is None
        if not outcome.error:
            return False
        text = outcome.error.lower()
        return all(s.lower() in text for s in self.expect) and not any(s.lower() in text for s in self.forbid)
