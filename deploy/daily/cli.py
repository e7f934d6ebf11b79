"""The command line of the local daily loop."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from deploy.daily.loop import DAYS, LOCAL_PARAMETERS, run_loop


def _parameter(value: str) -> tuple[str, str]:
    name, sep, v = value.partition("=")
    if not sep:
        raise click.BadParameter(f"{value!r}: NAME=VALUE")
    return name, v


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=Path("results/daily_loop.json"),
              show_default=True, help="The record: steps, commands, durations, versions served, the checks.")
@click.option("--work", type=click.Path(path_type=Path, file_okay=False), default=Path("artifacts/daily_loop"),
              show_default=True, help="Scratch directory (emptied first): the volume, the fleet, every pod's log.")
@click.option("--replicas", type=click.IntRange(min=2), default=2, show_default=True,
              help="Fleet replicas (the canary and at least one more).")
@click.option("--lose-training-pod/--no-lose-training-pod", default=True, show_default=True,
              help="Kill PinnerFormer's Worker pod after its first checkpoint on day 0: the job must resume.")
@click.option("-p", "--parameter", "parameters", multiple=True, metavar="NAME=VALUE",
              help="Override a workflow parameter on every day (as `argo submit -p`), after the local sizes.")
def main(out: Path, work: Path, replicas: int, lose_training_pod: bool, parameters: tuple[str, ...]) -> None:
    """Run the daily loop of deploy/k8s/daily here, from its manifests:
    the WorkflowTemplate's DAG with the CronWorkflow's arguments, the
    PyTorchJobs as torchrun processes with the Training Operator's
    environment (2 gloo ranks), the Indexed Job as one process per shard,
    the fleet as `pinrank serve --model-control explicit` replicas over one
    repository. Three days: bootstrap, a rollout under live traffic, a
    forced canary failure that must roll back. Exit 1 unless all checks pass.
    """
    overrides = dict(_parameter(p) for p in parameters)
    click.echo(f"local sizes: {json.dumps({**LOCAL_PARAMETERS, **overrides})}")
    click.echo("days: " + "; ".join(f"{d.number}: {d.what}" for d in DAYS))
    record = run_loop(work, replicas=replicas, lose_training_pod=lose_training_pod, overrides=overrides,
                      log=lambda line: click.echo(line))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    click.echo(f"\nwrote {out}: failed_requests_during_switch={record['failed_requests_during_switch']}, "
               f"rollback_on_canary_failure={record['rollback_on_canary_failure']}, "
               f"{record['total_seconds']:.0f} s, checks {json.dumps(record.get('checks'))}")
    sys.exit(0 if record["ok"] else 1)
