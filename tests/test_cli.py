"""The top-level `pinrank` command: help everywhere, one-line errors."""

from __future__ import annotations

import importlib
import socket

import click
import pytest
from click.testing import CliRunner

from pinrank.cli import COMMANDS as LAZY_COMMANDS
from pinrank.cli import TRAIN_COMMANDS, main
from pinrank.serving.tritonserver import free_ports

COMMANDS = [[], ["data"], ["data", "synth"], ["train"], ["train", "pinnerformer"], ["train", "ranker"],
            ["embed"], ["embed-merge"], ["export"], ["serve"], ["demo"], ["rollout"]]


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "pinrank")
def test_every_command_has_help(args, flag):
    # Click caches a command's help option the first time it is asked for; a test that
    # invoked the command object on its own (outside `pinrank`, whose context adds -h)
    # leaves one without -h behind. A fresh process never has that cache.
    ctx = click.Context(main)
    for name in args:
        cmd = main.get_command(ctx, name) if ctx.command is main else ctx.command.get_command(ctx, name)
        ctx = click.Context(cmd, parent=ctx)
        if hasattr(cmd, "_help_option"):
            cmd._help_option = None
    result = CliRunner().invoke(main, [*args, flag])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "-h, --help" in result.output


@pytest.mark.parametrize("name", [*LAZY_COMMANDS, *TRAIN_COMMANDS])
def test_listed_summary_is_the_commands_own(name):
    """`pinrank --help` lists subcommands from summaries in pinrank.cli (so it
    imports none of their modules); each must be what the command says itself."""
    where, summary = {**LAZY_COMMANDS, **TRAIN_COMMANDS}[name]
    module, attr = where.split(":")
    command = getattr(importlib.import_module(module), attr)
    assert command.name == name
    assert command.get_short_help_str(limit=1000) == summary


def run(args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_serve_without_repository_says_so(tmp_path):
    r = run(["serve", "--repository", tmp_path / "missing"])
    assert r.exit_code != 0 and "does not exist" in r.output and "Traceback" not in r.output


def test_serve_on_an_occupied_port_says_so(pipeline):
    http, grpc, metrics = free_ports(3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", http))
        s.listen()
        r = run(["serve", "--repository", pipeline.repository / "cpu", "--http-port", http,
                 "--grpc-port", grpc, "--metrics-port", metrics])
    assert r.exit_code != 0 and f"http port {http} already in use" in r.output


def test_export_rejects_a_dataset_that_does_not_match(pipeline, tmp_path):
    other = tmp_path / "other"
    run(["data", "synth", "--out", other, "--users", 50, "--items", 123, "--days", 10, "--eval-days", 2, "--quiet"])
    r = run(["export", "--ranker", pipeline.ranker, "--snapshot", pipeline.snapshot, "--data", other,
             "--out", tmp_path / "repo", "--results", tmp_path / "export.json"])
    assert r.exit_code != 0 and "trained on" in r.output
    assert not (tmp_path / "repo" / "cpu").exists()


def test_export_rejects_a_wrong_checkpoint_kind(pipeline, tmp_path):
    r = run(["export", "--ranker", pipeline.pinnerformer, "--snapshot", pipeline.snapshot, "--data", pipeline.data,
             "--out", tmp_path / "repo", "--results", tmp_path / "export.json"])
    assert r.exit_code != 0 and "ranker" in r.output and "Traceback" not in r.output


def test_malformed_dataset_is_one_clear_line(tmp_path):
    (tmp_path / "meta.json").write_text("{not json")
    r = run(["train", "pinnerformer", "--data", tmp_path, "--out", tmp_path / "pf.pt"])
    assert r.exit_code != 0 and "invalid JSON" in r.output
