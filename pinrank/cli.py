"""The `pinrank` command: data -> train -> embed -> export -> serve."""

from __future__ import annotations

import importlib
from typing import Any

import click

#: Subcommand -> (where it lives, its one-line summary for `--help`).
#: tests/test_cli.py checks each summary against the command's own help.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("pinrank.data.cli:data", "Make, import and validate pinrank datasets."),
    "embed": ("pinrank.train.cli_pinnerformer:embed", "Build the daily user-embedding snapshot that serving reads."),
    "embed-merge": ("pinrank.train.cli_pinnerformer:embed_merge",
                    "Merge the shard directories of `pinrank embed --num-shards N --shard-index I` into one "
                    "versioned snapshot."),
    "export": ("pinrank.export.cli:export",
               "Export the ranker, check each format's parity with eager on edge cases (1 and MAX candidates, "
               "empty/full history, everything inside the mask window, unknown ids) and publish a new version "
               "of the ensemble into OUT/cpu and/or OUT/gpu."),
    "serve": ("pinrank.serving.cli:serve",
              "Serve the pinrank ensemble on 127.0.0.1 (or --host) until Ctrl-C or SIGTERM."),
    "demo": ("pinrank.demo:demo",
             "Start the bundled tritonserver on free localhost ports, rank candidates for a few held-out users "
             "through the pinrank-client SDK (gRPC), print the rankings and latency, write OUT, and stop the server."),
    "trace": ("pinrank.serving.trace:trace",
              "Print per-step timings of traced requests (`pinrank serve --trace-file FILE`)."),
    "rollout": ("pinrank.rollout.cli:rollout",
                "Roll a published version out to a fleet of `pinrank serve --model-control explicit` replicas "
                "that share one repository: switch a canary, check it on replayed requests against an old "
                "replica (errors, the answer contract, p99 latency), then switch the others one at a time; roll "
                "back when the canary or a switch fails."),
    "eval": ("pinrank.eval.cli:eval_group",
             "Measure retrieval quality with the field's protocols (docs/results.md, \"Real logs\")."),
}
TRAIN_COMMANDS: dict[str, tuple[str, str]] = {
    "pinnerformer": ("pinrank.train.cli_pinnerformer:train_pinnerformer",
                     "Train the PinnerFormer user tower (default: the dense all-action loss)."),
    "ranker": ("pinrank.train.cli_ranker:train_ranker",
               "Train the ranker (DCN v2 over candidate, PinnerFormer user embedding, context and the realtime "
               "action sequence; one head per schema.HEADS) on the dataset's impressions from --train-start "
               "(default: the PinnerFormer's training cut) to meta train_end_ms, then report AUC and HIT@3 per "
               "head on the requests after it."),
}


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs, and lists
    subcommands from their summaries, so `pinrank --help` and `pinrank serve`
    import no training or export code (and no torch). The subcommand modules
    can therefore import what they need at module level."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr = self.lazy[name][0].split(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            if name in self.lazy:
                rows.append((name, click.Command(name, help=self.lazy[name][1])))  # stands in for the real one
            elif (cmd := super().get_command(ctx, name)) is not None and not cmd.hidden:
                rows.append((name, cmd))
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in rows)
        with formatter.section("Commands"):
            formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pinrank")
def main() -> None:
    """pinrank: PinnerFormer + realtime-sequence ranking, served on Triton."""


@main.group(cls=LazyGroup, lazy=TRAIN_COMMANDS)
def train() -> None:
    """Train the PinnerFormer user tower or the ranker."""


if __name__ == "__main__":
    main()
