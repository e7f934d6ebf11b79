"""Write a servable Triton model repository for one profile.

Layout (names from the schema):

    <repo>/pinrank/config.pbtxt, 1/            ensemble
    <repo>/preprocess/config.pbtxt, <v>/model.py, <v>/_vendor/, <v>/artifacts/
    <repo>/ranker/config.pbtxt, <v>/ranker.pt, <v>/ranker.onnx
                                [+ model.py, _vendor/ on cpu; + model.plan on gpu]
    <repo>/postprocess/config.pbtxt, <v>/model.py, <v>/_vendor/

or, with the cpu profile's single-model pipeline (ProfileSettings.pipeline):

    <repo>/pinrank/config.pbtxt, <v>/model.py, <v>/_vendor/, <v>/artifacts/, <v>/ranker.{pt,onnx}

Whichever ranker formats the export produced ship side by side (the
artifact a profile does not load costs disk only, and lets a deployment
switch runtime without re-exporting); the config and, on cpu, model.py pick
the one that runs (ProfileSettings.cpu_runtime / gpu_backend).

Each publish adds version <v> = (highest existing) + 1 to every step model;
version directories are assembled under a hidden temporary name and renamed
into place, so a polling server never sees a half-written version. The item
vocabulary and user snapshot are artifacts *of a version*: a daily snapshot is
a new version.
"""

from __future__ import annotations

import importlib
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from pinrank import schema
from pinrank.serving.preprocess import ITEM_IDS_FILE, SNAPSHOT_DIR
from pinrank.serving.ranker_runtime import NUM_ITEMS_KEY
from pinrank.snapshot import UserSnapshot
from pinrank.vocab import ItemVocab
from pinrank.export.configs import ProfileSettings, parse_pbtxt, profile_configs, to_pbtxt

PYTHON_MODELS_DIR = Path(__file__).resolve().parent.parent / "model_repository" / "python_models"

#: The checked-in Python-backend model.py of each model that has one.
PYTHON_SOURCES = {
    schema.PREPROCESS_MODEL: "preprocess.py",
    schema.RANKER_MODEL: "ranker.py",  # cpu profile only
    schema.POSTPROCESS_MODEL: "postprocess.py",
    schema.ENSEMBLE_MODEL: "pipeline.py",  # single-model pipeline only
}
#: Ranker artifact file names inside a version directory.
TORCHSCRIPT_FILE, ONNX_FILE, PLAN_FILE = "ranker.pt", "ranker.onnx", "model.plan"

#: numpy-only modules the Python-backend models import, vendored per version.
VENDORED_MODULES = (
    "pinrank_client.schema",
    "pinrank_client.validation",
    "pinrank.schema",
    "pinrank.vocab",
    "pinrank.snapshot",
    "pinrank.serving.featurize",
    "pinrank.serving.preprocess",
    "pinrank.serving.postprocess",
    "pinrank.serving.ranker_runtime",
    "pinrank.serving.backend_metrics",
    "pinrank.serving.step_inputs",
)


@dataclass
class PublishedVersion:
    repository: Path
    version: int
    profile: str
    models: list[str]


STEP_MODELS = (schema.PREPROCESS_MODEL, schema.RANKER_MODEL, schema.POSTPROCESS_MODEL)


def published_models(pipeline: str) -> tuple[str, ...]:
    """The models that get a new version on each publish."""
    return (schema.ENSEMBLE_MODEL,) if pipeline == "single" else STEP_MODELS


def existing_pipeline(repo: Path) -> str | None:
    """Which layout `repo` already holds (None when it holds none)."""
    config = repo / schema.ENSEMBLE_MODEL / "config.pbtxt"
    if not config.is_file():
        return None
    return "ensemble" if parse_pbtxt(config.read_text()).platform == "ensemble" else "single"


def _next_version(repo: Path, models: tuple[str, ...]) -> int:
    versions = [
        int(p.name)
        for model in models
        if (repo / model).is_dir()
        for p in (repo / model).iterdir()
        if p.is_dir() and p.name.isdigit()
    ]
    return max(versions, default=0) + 1


def _vendor(dest: Path) -> None:
    """Copy the serving modules with their package structure (empty __init__s:
    the real ones may import tritonclient, which a server image lacks)."""
    for module in VENDORED_MODULES:
        src = Path(importlib.import_module(module).__file__ or "")
        parts = module.split(".")
        target = dest.joinpath(*parts[:-1], parts[-1] + ".py")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        for i in range(1, len(parts)):
            init = dest.joinpath(*parts[:i], "__init__.py")
            if not init.exists():
                init.write_text("")


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    tmp.replace(path)


def _ranker_files(profile: str, settings: ProfileSettings, torchscript: Path | None, onnx: Path | None,
                  plan: Path | None) -> dict[str, Path]:
    """Version-dir name -> source for the ranker; raises if the runtime's artifact is missing."""
    files = {TORCHSCRIPT_FILE: torchscript, ONNX_FILE: onnx}
    if profile == "cpu":
        runtime = f"cpu_runtime={settings.cpu_runtime}"
        needed = ONNX_FILE if settings.cpu_runtime == "onnxruntime" else TORCHSCRIPT_FILE
    else:
        files[PLAN_FILE] = plan  # arch-specific: pointless on the cpu profile
        runtime = f"gpu_backend={settings.gpu_backend}"
        needed = PLAN_FILE if settings.gpu_backend == "tensorrt" else TORCHSCRIPT_FILE
    if files.get(needed) is None:
        raise ValueError(f"{profile} profile with {runtime} needs {needed}, which this export did not produce")
    return {name: src for name, src in files.items() if src is not None}


def write_repository(
    repo: str | Path,
    profile: str,
    ranker_torchscript: str | Path | None,
    vocab: ItemVocab,
    snapshot: UserSnapshot,
    manifest: dict | None = None,
    settings: ProfileSettings | None = None,
    *,
    ranker_onnx: str | Path | None = None,
    ranker_plan: str | Path | None = None,
) -> PublishedVersion:
    """Publish a new version of the request path's models into `repo` (the
    ensemble's three step models, or the single pipeline model).

    `ranker_onnx` ships as ranker.onnx and `ranker_plan` (gpu profile only)
    as model.plan, next to ranker.pt; `settings` says which one runs.
    """
    repo = Path(repo)
    settings = settings or ProfileSettings()
    configs = profile_configs(profile, settings)
    ranker_files = _ranker_files(
        profile, settings,
        Path(ranker_torchscript) if ranker_torchscript is not None else None,
        Path(ranker_onnx) if ranker_onnx is not None else None,
        Path(ranker_plan) if ranker_plan is not None else None,
    )
    present = existing_pipeline(repo)
    if present is not None and present != settings.pipeline:
        # Mixing layouts would leave a server loading stale step models (or
        # none): one repository, one layout.
        raise ValueError(f"{repo} holds the {present} pipeline; publish the {settings.pipeline} pipeline "
                         "into an empty directory (or delete this one first)")
    models = published_models(settings.pipeline)
    repo.mkdir(parents=True, exist_ok=True)
    version = _next_version(repo, models)
    staged: list[tuple[Path, Path]] = []
    try:
        for name in models:
            tmp = repo / name / f".staging-{version}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            staged.append((tmp, repo / name / str(version)))
            if name != schema.RANKER_MODEL or profile == "cpu":
                shutil.copyfile(PYTHON_MODELS_DIR / PYTHON_SOURCES[name], tmp / "model.py")
                _vendor(tmp / "_vendor")
            if name in (schema.PREPROCESS_MODEL, schema.ENSEMBLE_MODEL):
                (tmp / "artifacts").mkdir()
                vocab.save(tmp / "artifacts" / ITEM_IDS_FILE)
                snapshot.save(tmp / "artifacts" / SNAPSHOT_DIR)
            if name in (schema.RANKER_MODEL, schema.ENSEMBLE_MODEL):
                for file_name, src in ranker_files.items():
                    shutil.copyfile(src, tmp / file_name)
            runtime = settings.cpu_runtime if profile == "cpu" else settings.gpu_backend
            (tmp / "manifest.json").write_text(
                json.dumps({"profile": profile, "version": version, "ranker_runtime": runtime,
                            "pipeline": settings.pipeline,
                            "ranker_files": sorted(ranker_files), **(manifest or {}),
                            # The ranker refuses indices past its tables (step_inputs); the vocabulary
                            # it is published with sets their size.
                            NUM_ITEMS_KEY: len(vocab)}, indent=2, sort_keys=True)
            )
        if settings.pipeline == "ensemble":
            (repo / schema.ENSEMBLE_MODEL / "1").mkdir(parents=True, exist_ok=True)
        # Configs first, then versions: the latest-version policy only ever
        # switches to a complete directory.
        for name, cfg in configs.items():
            _write_text_atomic(repo / name / "config.pbtxt", to_pbtxt(cfg))
        for tmp, final in staged:
            tmp.rename(final)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return PublishedVersion(repo, version, profile, sorted(configs))


def latest_version_dir(repo: Path, model: str) -> Path:
    """The highest numbered version directory of `model` in `repo`."""
    versions = [p for p in (repo / model).glob("[0-9]*") if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise ValueError(f"{repo / model} has no version directory")
    return max(versions, key=lambda p: int(p.name))


def artifact_dirs(repo: Path, version: int | None = None) -> dict[str, Path]:
    """Where `version` (default: the latest) of a cpu repository keeps its
    preprocess artifacts ("artifacts": vocabulary, snapshot) and its ranker
    files ("ranker"), in either layout."""
    pipeline = existing_pipeline(repo)
    if pipeline is None:
        raise ValueError(f"{repo} holds no pinrank repository (no {schema.ENSEMBLE_MODEL}/config.pbtxt)")

    def version_dir(model: str) -> Path:
        return repo / model / str(version) if version is not None else latest_version_dir(repo, model)

    if pipeline == "single":
        return {"artifacts": version_dir(schema.ENSEMBLE_MODEL), "ranker": version_dir(schema.ENSEMBLE_MODEL)}
    return {"artifacts": version_dir(schema.PREPROCESS_MODEL), "ranker": version_dir(schema.RANKER_MODEL)}


def republish(src: str | Path, dst: str | Path, settings: ProfileSettings) -> PublishedVersion:
    """Publish the latest cpu-profile version of `src` into `dst` with other
    settings (another pipeline layout, instance counts), from its shipped
    artifacts: no re-export, the same parity-gated ranker files."""
    src = Path(src)
    dirs = artifact_dirs(src)
    artifacts_dir, ranker_dir = dirs["artifacts"], dirs["ranker"]
    manifest = json.loads((ranker_dir / "manifest.json").read_text())
    if manifest.get("profile") != "cpu":
        raise ValueError(f"{src} is a {manifest.get('profile')} profile repository; only cpu ones can be republished")
    inherited = {k: v for k, v in manifest.items()
                 if k not in ("profile", "version", "ranker_runtime", "pipeline", "ranker_files")}
    present = {name: ranker_dir / name for name in (TORCHSCRIPT_FILE, ONNX_FILE) if (ranker_dir / name).is_file()}
    return write_repository(
        dst, "cpu", present.get(TORCHSCRIPT_FILE),
        ItemVocab.load(artifacts_dir / "artifacts" / ITEM_IDS_FILE),
        UserSnapshot.load(artifacts_dir / "artifacts" / SNAPSHOT_DIR),
        manifest={**inherited, "republished_from": str(src)}, settings=settings, ranker_onnx=present.get(ONNX_FILE),
    )
