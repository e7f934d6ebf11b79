"""pinrank CLI cases: export, data import/validate and serve handed broken
checkpoints, datasets, repositories, key files and flags."""

from __future__ import annotations

import shutil
from pathlib import Path

from reliability.bad_inputs.broken_files import (
    ML_OK,
    broken_config_repo,
    movielens_dir,
    payload_check,
    pickle_payload,
    tampered_repo,
    truncated_copy,
    wrong_kind_checkpoint,
)
from reliability.bad_inputs.case import Case, Context
from reliability.bad_inputs.cli_runners import run_pinrank
from reliability.bad_inputs.helpers import cli_outcome, pinrank_case


def _export_args(ctx: Context, ranker: Path) -> list[object]:
    fx = ctx.fixtures
    out = ctx.scratch("export_out")
    return ["export", "--ranker", ranker, "--snapshot", fx.snapshot, "--data", fx.dataset, "--out", out / "repo",
            "--target", "cpu", "--results", out / "export.json"]


def _open_key_file(ctx: Context) -> Path:
    path = ctx.scratch("open_key") / "admin-key"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    path.chmod(0o644)
    return path


def pinrank_cli_cases() -> list[Case]:
    no_env_key = {"PINRANK_ADMIN_KEY": ""}
    return [
        Case("pinrank_cli_export_truncated_checkpoint", "pinrank_cli", "export from a truncated checkpoint",
             pinrank_case(lambda ctx: _export_args(ctx, truncated_copy(
                 ctx.fixtures.ranker, ctx.scratch("trunc_ckpt") / "ranker.pt"))),
             ("ranker.pt", "not a readable checkpoint")),
        Case("pinrank_cli_export_pickle_payload", "pinrank_cli",
             "export from a checkpoint carrying a pickle payload (code execution attempt)",
             payload_check(lambda ctx, marker: cli_outcome(*run_pinrank(_export_args(
                 ctx, pickle_payload(ctx.scratch("evil_ckpt") / "ranker.pt", marker))))),
             ("refused", "not a weights-only checkpoint"), forbid=("Traceback", "payload executed")),
        Case("pinrank_cli_export_wrong_kind", "pinrank_cli", "export from a non-ranker checkpoint",
             pinrank_case(lambda ctx: _export_args(ctx, wrong_kind_checkpoint(ctx))),
             ("expected a 'ranker' checkpoint", "pinnerformer")),
        Case("pinrank_cli_import_truncated_csv", "pinrank_cli", "data import of a ratings.csv cut mid-row",
             pinrank_case(lambda ctx: ["data", "import", "--format", "movielens", "--src",
                                        movielens_dir(ctx, "cli_trunc_csv", ML_OK + "3,10,4"),
                                        "--out", ctx.scratch("cli_trunc_out") / "ds"]),
             ("ratings.csv:5", "expected 4 columns")),
        Case("pinrank_cli_validate_corrupt_parquet", "pinrank_cli", "data validate on a truncated actions.parquet",
             pinrank_case(lambda ctx: ["data", "validate", _corrupt_dataset(ctx)]),
             ("actions.parquet", "not a readable Parquet file")),
        Case("pinrank_cli_serve_broken_config", "pinrank_cli", "serve a repository with a malformed config.pbtxt",
             pinrank_case(lambda ctx: ["serve", "--repository", broken_config_repo(ctx, "cli_broken_cfg")]),
             ("config.pbtxt", "not a valid Triton ModelConfig")),
        Case("pinrank_cli_serve_tampered_artifact", "pinrank_cli",
             "serve a repository whose ranker.onnx changed after export",
             pinrank_case(lambda ctx: ["serve", "--repository", tampered_repo(ctx, "cli_tampered")]),
             ("ranker.onnx", "does not match manifest.json")),
        Case("pinrank_cli_serve_missing_repository", "pinrank_cli", "serve a directory that does not exist",
             pinrank_case(lambda ctx: ["serve", "--repository", ctx.workdir / "no-such-repo"]),
             ("does not exist",)),
        Case("pinrank_cli_serve_world_readable_key", "pinrank_cli", "serve with an admin key file readable by others",
             pinrank_case(lambda ctx: ["serve", "--repository", ctx.fixtures.repository,
                                        "--admin-key-file", _open_key_file(ctx)], env=no_env_key),
             ("admin key file", "readable by others", "chmod 600")),
        Case("pinrank_cli_export_bad_instances", "pinrank_cli", "export --instances 2:x:1",
             pinrank_case(lambda ctx: [*_export_args(ctx, ctx.fixtures.ranker), "--instances", "2:x:1"]),
             ("--instances", "PRE:RANKER:POST")),
    ]


def _corrupt_dataset(ctx: Context) -> Path:
    ds = ctx.scratch("corrupt_dataset") / "data"
    shutil.copytree(ctx.fixtures.dataset, ds)
    truncated_copy(ds / "actions.parquet", ds / "actions.parquet", keep=0.4)
    return ds
