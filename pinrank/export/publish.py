"""Publish a servable Triton model repository for one profile: the layout
is pinrank.repository.layout's; this module writes it.

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

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

import pinrank.backend
import pinrank_client.schema
import pinrank_client.validation
from pinrank.backend import schema
from pinrank.backend.snapshot import UserSnapshot
from pinrank.backend.vocab import ItemVocab
from pinrank.export.configs import GPU_MODEL_FILES, ProfileSettings, config_variants, profile_configs
from pinrank.repository.integrity import MANIFEST
from pinrank.repository.layout import (
    ARTIFACTS_DIR,
    ITEM_IDS_FILE,
    MODEL_FILE,
    NUM_ITEMS_KEY,
    ONNX_FILE,
    PLAN_FILE,
    PYTHON_MODELS_DIR,
    PYTHON_SOURCES,
    SNAPSHOT_DIR,
    TORCHSCRIPT_FILE,
    VENDOR_DIR,
    artifact_dirs,
    config_path,
    existing_pipeline,
    published_models,
    version_numbers,
)
from pinrank.repository.pbtxt import read_config, write_config

#: The client's tensor contract, vendored beside pinrank.backend (which imports it).
CLIENT_CONTRACT = (pinrank_client.schema, pinrank_client.validation)


@dataclass
class PublishedVersion:
    repository: Path
    version: int
    profile: str
    models: list[str]



def _next_version(repo: Path, models: tuple[str, ...]) -> int:
    return max(version_numbers(repo, models), default=0) + 1


def _vendor(dest: Path) -> None:
    """Copy pinrank.backend whole, and the client's contract it imports, with
    their package structure. The package __init__s above them are written
    empty: the real ones may import what a server image lacks."""
    backend = Path(pinrank.backend.__file__).parent
    shutil.copytree(backend, dest / "pinrank" / "backend", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "pinrank" / "__init__.py").write_text("")
    (dest / "pinrank_client").mkdir()
    (dest / "pinrank_client" / "__init__.py").write_text("")
    for module in CLIENT_CONTRACT:
        src = Path(module.__file__ or "")
        shutil.copyfile(src, dest / "pinrank_client" / src.name)


def _keep_version_pin(path: Path, cfg: mc.ModelConfig) -> None:
    """Carry a version pin of the config on disk into its replacement. A
    fleet under explicit model control pins the version it serves
    (pinrank.serving.model_control.switch_version); publishing v+1 must not
    unpin it, or a server that restarts before the rollout's canary would load
    v+1 unchecked."""
    if not path.is_file():
        return
    old = read_config(path)
    if old.version_policy.HasField("specific"):
        cfg.version_policy.CopyFrom(old.version_policy)
    for new_step, old_step in zip(cfg.ensemble_scheduling.step, old.ensemble_scheduling.step):
        if new_step.model_name == old_step.model_name:
            new_step.model_version = old_step.model_version


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
        needed = GPU_MODEL_FILES[settings.gpu_backend]
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
            if name != schema.RANKER_MODEL or profile == "cpu" or settings.gpu_backend == "python":
                shutil.copyfile(PYTHON_MODELS_DIR / PYTHON_SOURCES[name], tmp / MODEL_FILE)
                _vendor(tmp / VENDOR_DIR)
            if name in (schema.PREPROCESS_MODEL, schema.ENSEMBLE_MODEL):
                (tmp / ARTIFACTS_DIR).mkdir()
                vocab.save(tmp / ARTIFACTS_DIR / ITEM_IDS_FILE)
                snapshot.save(tmp / ARTIFACTS_DIR / SNAPSHOT_DIR)
            if name in (schema.RANKER_MODEL, schema.ENSEMBLE_MODEL):
                for file_name, src in ranker_files.items():
                    shutil.copyfile(src, tmp / file_name)
            runtime = settings.cpu_runtime if profile == "cpu" else settings.gpu_backend
            (tmp / MANIFEST).write_text(
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
            _keep_version_pin(config_path(repo, name), cfg)
            write_config(config_path(repo, name), cfg, tmp_suffix=f".{uuid.uuid4().hex}")
        for variant, variant_configs in config_variants(profile, settings).items():
            for name, cfg in variant_configs.items():
                path = config_path(repo, name, variant)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_config(path, cfg, tmp_suffix=f".{uuid.uuid4().hex}")
        for tmp, final in staged:
            tmp.rename(final)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return PublishedVersion(repo, version, profile, sorted(configs))


def republish(src: str | Path, dst: str | Path, settings: ProfileSettings) -> PublishedVersion:
    """Publish the latest cpu-profile version of `src` into `dst` with other
    settings (another pipeline layout, instance counts), from its shipped
    artifacts: no re-export, the same parity-gated ranker files."""
    src = Path(src)
    dirs = artifact_dirs(src)
    artifacts_dir, ranker_dir = dirs["artifacts"], dirs["ranker"]
    manifest = json.loads((ranker_dir / MANIFEST).read_text())
    if manifest.get("profile") != "cpu":
        raise ValueError(f"{src} is a {manifest.get('profile')} profile repository; only cpu ones can be republished")
    inherited = {k: v for k, v in manifest.items()
                 if k not in ("profile", "version", "ranker_runtime", "pipeline", "ranker_files")}
    present = {name: ranker_dir / name for name in (TORCHSCRIPT_FILE, ONNX_FILE) if (ranker_dir / name).is_file()}
    return write_repository(
        dst, "cpu", present.get(TORCHSCRIPT_FILE),
        ItemVocab.load(artifacts_dir / ARTIFACTS_DIR / ITEM_IDS_FILE),
        UserSnapshot.load(artifacts_dir / ARTIFACTS_DIR / SNAPSHOT_DIR),
        manifest={**inherited, "republished_from": str(src)}, settings=settings, ranker_onnx=present.get(ONNX_FILE),
    )
