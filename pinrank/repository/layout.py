"""Where things are in a pinrank model repository, for export (which writes
it) and serving (which loads, switches and checks it).

    <repo>/pinrank/config.pbtxt, 1/            ensemble
    <repo>/preprocess/config.pbtxt, <v>/model.py, <v>/_vendor/, <v>/artifacts/
    <repo>/ranker/config.pbtxt, <v>/ranker.pt, <v>/ranker.onnx
                                [+ model.py, _vendor/ on cpu and gpu's python backend; + model.plan on gpu]
                                [+ configs/cpu.pbtxt: gpu's python backend on KIND_CPU]
    <repo>/postprocess/config.pbtxt, <v>/model.py, <v>/_vendor/

or, with the cpu profile's single-model pipeline:

    <repo>/pinrank/config.pbtxt, <v>/model.py, <v>/_vendor/, <v>/artifacts/, <v>/ranker.{pt,onnx}

Every version directory holds manifest.json (integrity.MANIFEST).
"""

from __future__ import annotations

from pathlib import Path

from pinrank.backend import schema
from pinrank.backend.preprocess import ITEM_IDS_FILE, SNAPSHOT_DIR  # noqa: F401  (re-exported: the layout's names)
from pinrank.backend.ranker_runtime import (  # noqa: F401  (idem)
    ALLOW_TF32_PARAMETER,
    CUDA_GRAPHS_PARAMETER,
    NUM_ITEMS_KEY,
    RUNTIME_PARAMETER,
    WARMUP_CANDIDATES,
    WARMUP_COUNT,
)
from pinrank.repository.pbtxt import read_config

#: The Python-backend model.py sources (package data), per model that has one.
PYTHON_MODELS_DIR = Path(__file__).resolve().parent / "python_models"
PYTHON_SOURCES = {
    schema.PREPROCESS_MODEL: "preprocess.py",
    schema.RANKER_MODEL: "ranker.py",  # cpu profile, and gpu with the python backend
    schema.POSTPROCESS_MODEL: "postprocess.py",
    schema.ENSEMBLE_MODEL: "single_model.py",  # single-model pipeline only
}
CONFIG_FILE = "config.pbtxt"
#: Triton's folder of named config variants (--model-config-name), and the
#: variant that runs a gpu-profile model on the CPU.
CONFIG_VARIANTS_DIR, CPU_CONFIG_VARIANT = "configs", "cpu"
#: Inside a version directory: the model.py, the vendored backend, the
#: preprocess artifacts (vocabulary, snapshot).
MODEL_FILE, VENDOR_DIR, ARTIFACTS_DIR = "model.py", "_vendor", "artifacts"
#: Ranker artifact file names inside a version directory.
TORCHSCRIPT_FILE, ONNX_FILE, PLAN_FILE = "ranker.pt", "ranker.onnx", "model.plan"

#: How the request path is laid out: Triton's ensemble of three step models,
#: or (cpu only) one Python model doing all three.
PIPELINES = ("ensemble", "single")
STEP_MODELS = (schema.PREPROCESS_MODEL, schema.RANKER_MODEL, schema.POSTPROCESS_MODEL)


def config_path(repo: Path, model: str, variant: str | None = None) -> Path:
    """config.pbtxt, or the named variant's configs/<variant>.pbtxt."""
    if variant is None:
        return Path(repo) / model / CONFIG_FILE
    return Path(repo) / model / CONFIG_VARIANTS_DIR / f"{variant}.pbtxt"


def published_models(pipeline: str) -> tuple[str, ...]:
    """The models that get a new version on each publish."""
    return (schema.ENSEMBLE_MODEL,) if pipeline == "single" else STEP_MODELS


def existing_pipeline(repo: Path) -> str | None:
    """Which layout `repo` already holds (None when it holds none)."""
    config = config_path(repo, schema.ENSEMBLE_MODEL)
    if not config.is_file():
        return None
    return "ensemble" if read_config(config).platform == "ensemble" else "single"


def version_numbers(repo: Path, models: tuple[str, ...]) -> list[int]:
    """Every numbered version directory of `models` in `repo`."""
    return [
        int(p.name)
        for model in models
        if (Path(repo) / model).is_dir()
        for p in (Path(repo) / model).iterdir()
        if p.is_dir() and p.name.isdigit()
    ]


def latest_version_dir(repo: Path, model: str) -> Path:
    """The highest numbered version directory of `model` in `repo`."""
    versions = [p for p in (Path(repo) / model).glob("[0-9]*") if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise ValueError(f"{Path(repo) / model} has no version directory")
    return max(versions, key=lambda p: int(p.name))


def artifact_dirs(repo: Path, version: int | None = None) -> dict[str, Path]:
    """Where `version` (default: the latest) of a cpu repository keeps its
    preprocess artifacts ("artifacts": vocabulary, snapshot) and its ranker
    files ("ranker"), in either layout."""
    repo = Path(repo)
    pipeline = existing_pipeline(repo)
    if pipeline is None:
        raise ValueError(f"{repo} holds no pinrank repository (no {schema.ENSEMBLE_MODEL}/{CONFIG_FILE})")

    def version_dir(model: str) -> Path:
        return repo / model / str(version) if version is not None else latest_version_dir(repo, model)

    if pipeline == "single":
        return {"artifacts": version_dir(schema.ENSEMBLE_MODEL), "ranker": version_dir(schema.ENSEMBLE_MODEL)}
    return {"artifacts": version_dir(schema.PREPROCESS_MODEL), "ranker": version_dir(schema.RANKER_MODEL)}
