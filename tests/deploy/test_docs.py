"""docs/deploy.md shows real code: its Python compiles and calls the SDK with
arguments the SDK has, and its `pinrank` / `pinrank-client` command lines use
options the commands have. Docs that drift from the code fail here."""

from __future__ import annotations

import ast
import inspect
import re
import shlex
from pathlib import Path

import click
import pytest

import pinrank_client
from pinrank.cli import main as pinrank_main
from pinrank_client.cli import main as client_main

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(DOC.read_text()) if lang == language]


def test_the_guide_has_the_sections_the_issue_asks_for():
    text = DOC.read_text()
    for needed in ("pinrank export", "docker build", "docker push", "kubectl apply -k deploy/k8s/triton",
                   "rollout status", "/v2/health/ready", "ServiceMonitor", "prometheus-adapter",
                   "HorizontalPodAutoscaler", "InferenceService", "storageUri", "rollout undo",
                   "RankingClient(FLEETS", "not** been applied"):
        assert needed in text, needed


def check_python(source: str) -> None:
    tree = ast.parse(source)  # compiles
    imported = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "pinrank_client":
            for alias in node.names:
                assert hasattr(pinrank_client, alias.name), f"pinrank_client has no {alias.name}"
                imported[alias.asname or alias.name] = getattr(pinrank_client, alias.name)
    clients = {name for name, obj in imported.items() if obj in (pinrank_client.RankingClient,
                                                                   pinrank_client.AsyncRankingClient)}
    bound = set()  # names that hold a client: `x = RankingClient(...)`, `with ... as x`
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in imported:
            target = imported[node.func.id]
            if callable(target):
                sig = inspect.signature(target)
                # Placeholders for the values: only the argument structure is checked.
                sig.bind(*[None] * len(node.args), **{k.arg: None for k in node.keywords if k.arg})
        if isinstance(node, ast.withitem) and isinstance(node.context_expr, ast.Call) \
                and getattr(node.context_expr.func, "id", None) in clients and node.optional_vars is not None:
            bound.add(node.optional_vars.id)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and getattr(node.value.func, "id", None) in clients:
            bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id in bound:
            method = getattr(pinrank_client.RankingClient, node.func.attr, None)
            assert method is not None, f"clients have no method {node.func.attr}"
            inspect.signature(method).bind(None, *[None] * len(node.args),
                                           **{k.arg: None for k in node.keywords if k.arg})


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_examples_use_the_sdk_as_it_is(index):
    check_python(blocks("python")[index])


@pytest.mark.parametrize("source", [
    "from pinrank_client import RankingClient\nRankingClient(['a:1', 'b:1'], failover=True)",
    "from pinrank_client import RankingClient\nwith RankingClient('a:1') as c:\n    c.rank_all([])",
    "from pinrank_client import RankingClient\nc = RankingClient('a:1')\nc.rank(1, [2], top=3)",
    "from pinrank_client import RoundRobinClient",
])
def test_python_check_can_fail(source):
    with pytest.raises((AssertionError, TypeError)):
        check_python(source)


def _command_lines() -> list[list[str]]:
    """Every `pinrank ...` / `pinrank-client ...` command in the bash blocks,
    continuation lines joined, leading VAR=value assignments dropped."""
    lines = []
    for body in blocks("bash"):
        joined = re.sub(r"\\\n\s*", " ", body)
        for line in joined.splitlines():
            for part in line.split(" && "):
                part = re.sub(r"\$\([^)]*\)", "X", part.split(" #")[0]).strip()
                part = re.sub(r"^(?:[A-Z_]+=\S*\s+)+", "", part)
                if re.match(r"^pinrank(-client)?\s", part):
                    lines.append(shlex.split(part.split(" | ")[0].split(" &")[0]))
    return lines


def _resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    command: click.Command = pinrank_main if words[0] == "pinrank" else client_main
    rest = words[1:]
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"{' '.join(words)}: no command {rest[0]!r}"
        command, rest = sub, rest[1:]
    return command, rest


def check_command(words: list[str]) -> None:
    command, rest = _resolve(words)
    options = {opt for p in command.params for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
    for word in rest:
        if word.startswith("--"):
            assert word.split("=")[0] in options, f"{' '.join(words)}: {command.name} has no {word}"


def test_command_lines_use_real_options():
    lines = _command_lines()
    assert {tuple(w[:2]) for w in lines} >= {("pinrank", "export"), ("pinrank", "train"), ("pinrank", "embed")}
    assert {w[1] for w in lines if w[0] == "pinrank-client"} >= {"health", "rank", "models"}
    for words in lines:
        check_command(words)


@pytest.mark.parametrize("words", [["pinrank", "export", "--profile", "gpu"], ["pinrank-client", "failover"]])
def test_command_check_can_fail(words):
    with pytest.raises(AssertionError):
        check_command(words)
