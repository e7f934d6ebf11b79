"""The `pinrank` command: data -> train -> embed -> export -> serve."""

from __future__ import annotations

import click


class LazyGroup(click.Group):
    """Imports a subcommand's module only when it runs, so `pinrank --help`
    and `pinrank serve` don't pay for importing torch."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(__import__(module, fromlist=[attr]), attr)
        return super().get_command(ctx, name)


@click.group(
    cls=LazyGroup,
    lazy={
        "data": "pinrank.data.cli:data",
        "embed": "pinrank.train.cli_pinnerformer:embed",
        "embed-merge": "pinrank.train.cli_pinnerformer:embed_merge",
        "export": "pinrank.export.cli:export",
        "serve": "pinrank.serving.cli:serve",
        "demo": "pinrank.demo:demo",
        "eval": "pinrank.eval.cli:eval_group",
    },
)
@click.version_option(package_name="pinrank")
def main() -> None:
    """pinrank: PinnerFormer + realtime-sequence ranking, served on Triton."""


@main.group(
    cls=LazyGroup,
    lazy={
        "pinnerformer": "pinrank.train.cli_pinnerformer:train_pinnerformer",
        "ranker": "pinrank.train.cli_ranker:train_ranker",
    },
)
def train() -> None:
    """Train the PinnerFormer user tower or the ranker."""


if __name__ == "__main__":
    main()
