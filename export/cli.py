"""`pinrank export`: checkpoint -> TorchScript (parity-gated) -> Triton repository."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click

from pinrank import schema


def _library_versions() -> dict[str, str]:
    import numpy
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    for name in ("onnx", "onnxruntime", "tensorrt"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "not installed"
    return versions


def configs_valid(repo: Path) -> bool:
    """Every config.pbtxt under `repo` parses as a Triton ModelConfig."""
    from pinrank.export.configs import parse_pbtxt

    cfgs = list(repo.glob("*/config.pbtxt"))
    if not cfgs:
        return False
    for cfg in cfgs:
        try:
            parse_pbtxt(cfg.read_text())
        except Exception:
            return False
    return True


@click.command("export")
@click.option("--ranker", "ranker_ckpt", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              required=True, help="Ranker checkpoint from `pinrank train ranker`.")
@click.option("--snapshot", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="User-embedding snapshot directory from `pinrank embed`.")
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Dataset directory (its item catalogue is the serving vocabulary).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("model_repository"), show_default=True,
              help="Repositories are written to OUT/<target>.")
@click.option("--target", type=click.Choice(["cpu", "gpu", "all"]), default="all", show_default=True)
@click.option("--results", type=click.Path(path_type=Path), default=Path("results/export.json"),
              show_default=True, help="Where to write the parity/config report.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True, help="Max |eager - exported| allowed.")
def export(ranker_ckpt: Path, snapshot: Path, data: Path, out: Path, target: str, results: Path,
           tolerance: float) -> None:
    """Export the ranker to TorchScript, check parity with eager on edge cases
    (1 and MAX candidates, empty/full history, everything inside the mask
    window, unknown ids) and publish a new version of the ensemble into
    OUT/cpu and/or OUT/gpu. A failing parity gate publishes nothing."""
    from pinrank.data.dataset import DatasetError, load_dataset
    from pinrank.export.parity import ParityError
    from pinrank.export.repository import write_repository
    from pinrank.export.torchscript import export_torchscript
    from pinrank.models.ranker import load_serving_module
    from pinrank.snapshot import SnapshotError, UserSnapshot
    from pinrank.train.common import file_sha256
    from pinrank.vocab import ItemVocab

    try:
        ds = load_dataset(data)
        snap = UserSnapshot.load(snapshot)
        module = load_serving_module(ranker_ckpt)
    except (DatasetError, SnapshotError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    vocab = ItemVocab(ds.item_ids)
    table_rows = getattr(module, "num_items", None)
    if table_rows is not None and int(table_rows) != len(vocab):
        raise click.ClickException(
            f"ranker was trained on {int(table_rows)} items but {data} has {len(vocab)}: export with its own dataset"
        )
    staging = out / ".build"
    staging.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        ts_path, report = export_torchscript(module, staging / "ranker.pt", len(vocab), tolerance)
    except ParityError as exc:
        raise click.ClickException(f"parity gate failed, nothing published: {exc}") from None
    click.echo(f"TorchScript parity: max |diff| {max(report.max_abs_diff.values()):.2e} over {len(report.max_abs_diff)} edge cases")
    manifest = {
        "source_checkpoint": str(ranker_ckpt),
        "source_checkpoint_sha256": file_sha256(ranker_ckpt),
        "snapshot_version": snap.meta.get("version"),
        "snapshot_as_of_ms": snap.meta.get("as_of_ms"),
        "num_items": len(vocab),
        "schema_version": schema.SCHEMA_VERSION,
        "formats": ["torchscript"],
        "libraries": _library_versions(),
        "parity": {"torchscript": report.to_dict()},
        "created_unix": int(started),
    }
    targets = ["cpu", "gpu"] if target == "all" else [target]
    published = {}
    for t in targets:
        pv = write_repository(out / t, t, ts_path, vocab, snap, manifest=manifest)
        published[t] = {"repository": str(pv.repository), "version": pv.version}
        click.echo(f"published {t} profile version {pv.version} -> {pv.repository}")
    summary = {
        "formats": {
            "torchscript": {"max_abs_diff": {"probs": report.max_abs_diff}, "passed": report.passed},
            "onnx": {"skipped": "ONNX export arrives with issue 5"},
            "tensorrt": {"skipped": "needs an NVIDIA GPU and the `gpu` extra (issue 5)"},
        },
        "configs_valid": all(configs_valid(out / t) for t in targets),
        "published": published,
        "manifest": manifest,
        "seconds": round(time.time() - started, 2),
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(summary, indent=2, sort_keys=True))
    click.echo(f"wrote {results}")
