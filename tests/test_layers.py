"""The dependency rules of docs/architecture.md ("Layers"), checked on the
source: which pinrank layer may import which, what the vendored backend and
the host-side server may import from outside, that the product never
imports the checkout-only harnesses, and that every import left inside a
function says why beside it."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Layer of each part of the pinrank package, and the pinrank layers it may import.
#: Lower layers never import higher ones; serving and export are siblings.
ALLOWED: dict[str, set[str]] = {
    "backend": set(),
    "python_models": {"backend"},
    "metrics": set(),
    "repository": {"backend"},
    "data": {"backend", "metrics"},
    "models": {"backend", "data", "metrics"},
    "embed": {"backend", "data", "models"},
    "train": {"backend", "data", "models", "embed", "metrics"},
    "eval": {"backend", "data", "models", "embed", "train", "metrics"},
    "export": {"backend", "repository", "data", "models"},
    "serving": {"backend", "repository"},
    # The daily loop's rollout: drives servers, replays the log; no training stack.
    "rollout": {"backend", "repository", "data", "serving", "metrics"},
    "app": {"backend", "repository", "data", "models", "embed", "train", "eval", "export", "serving", "metrics",
            "rollout"},
}

#: Outside pinrank, what the layers that run in constrained places may import
#: (top-level module names; the standard library is always allowed).
EXTERNAL: dict[str, set[str]] = {
    # Vendored into every model version: Triton's stub has numpy and nothing of ours.
    # pinrank_client: the tensor contract, vendored beside it (schema, validation only: see below).
    # onnxruntime/torch: the runtime of the ranker a version ships, imported when it loads.
    "backend": {"numpy", "pinrank_client", "onnxruntime", "torch"},
    "python_models": {"numpy", "triton_python_backend_utils"},
    "metrics": {"numpy"},
    "repository": {"google", "tritonclient"},
    # Host side: no torch, no training stack (tests/serving check the import too).
    "serving": {"click", "google", "tritonclient", "pinrank_client", "pytriton", "numpy"},
    "rollout": {"click", "numpy", "tritonclient", "pinrank_client"},
}
#: Backend modules that exist to host one ranker runtime: they import it at
#: module level, and the rest of the backend imports them only inside functions.
BACKEND_RUNTIME_MODULES = {"pinrank.backend.torchscript_ranker": "torch"}
#: The only client modules the backend may import: they are vendored with it.
BACKEND_CLIENT_MODULES = {"pinrank_client.schema", "pinrank_client.validation"}
#: Checkout-only packages the product must never import.
HARNESSES = {"reliability", "loadtest", "testkit", "tests"}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str
    in_function: bool


def layer_of(rel: Path) -> str | None:
    """pinrank/<part>/... -> its layer; None outside the pinrank package."""
    parts = rel.parts
    if parts[0] != "pinrank":
        return None
    if len(parts) == 2:
        return "metrics" if parts[1] == "metrics.py" else "app"
    if parts[1] == "repository" and parts[2] == "python_models":
        return "python_models"
    return parts[1]


def imports_of(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    inner: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner.update(id(sub) for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pinrank.backend import schema` names the module pinrank.backend.schema
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [Import(path, node.lineno, name, id(node) in inner) for name in names]
    return found


def pinrank_layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pinrank" or len(parts) == 1:
        return None
    if parts[1] == "repository" and len(parts) > 2 and parts[2] == "python_models":
        return "python_models"
    if parts[1] in ALLOWED:
        return parts[1]
    return "metrics" if parts[1] == "metrics" else "app"


def _module_name(rel: Path) -> str:
    return ".".join(rel.with_suffix("").parts)


def violations(root: Path) -> list[str]:
    """Every broken rule under root/pinrank, as 'file:line: why'."""
    problems = []
    for path in sorted((root / "pinrank").rglob("*.py")):
        rel = path.relative_to(root)
        layer = layer_of(rel)
        assert layer is not None
        for imp in imports_of(path):
            top = imp.module.split(".")[0]
            where = f"{rel}:{imp.line}: {layer} imports {imp.module}"
            target = pinrank_layer(imp.module)
            if top in HARNESSES:
                problems.append(f"{where}: the product never imports the checkout-only harnesses")
            elif imp.module.startswith("click.testing"):
                problems.append(f"{where}: test tooling in the product")
            elif target is not None and target != layer and target not in ALLOWED[layer]:
                problems.append(f"{where}: {layer} may import only {sorted(ALLOWED[layer]) or 'itself'}")
            elif top != "pinrank" and layer in EXTERNAL and top not in STDLIB and top not in EXTERNAL[layer]:
                problems.append(f"{where}: {layer} may import only the standard library and "
                                f"{sorted(EXTERNAL[layer])}")
            elif layer == "backend" and top == "pinrank_client" and not any(
                    imp.module == m or imp.module.startswith(m + ".") for m in BACKEND_CLIENT_MODULES):
                problems.append(f"{where}: only {sorted(BACKEND_CLIENT_MODULES)} are vendored with the backend")
            elif layer == "backend" and not imp.in_function and any(
                    imp.module == m or imp.module.startswith(m + ".") for m in BACKEND_RUNTIME_MODULES):
                problems.append(f"{where}: a runtime module is imported when a ranker loads, not with the backend")
            elif (layer == "backend" and top in ("torch", "onnxruntime") and not imp.in_function
                  and BACKEND_RUNTIME_MODULES.get(_module_name(rel)) != top):
                problems.append(f"{where}: a ranker runtime is imported when a ranker loads, not with the backend")
    return problems


def unexplained_function_imports(root: Path, folders: tuple[str, ...]) -> list[str]:
    """Imports inside functions without `# noqa: PLC0415 - <reason>` beside them."""
    problems = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            lines = path.read_text().splitlines()
            for imp in imports_of(path):
                if not imp.in_function:
                    continue
                text = lines[imp.line - 1]
                _, _, reason = text.partition("noqa: PLC0415")
                if len(reason.strip(" -:()")) < 10:
                    problems.append(f"{path.relative_to(root)}:{imp.line}: `{text.strip()}` needs a reason "
                                    "(`# noqa: PLC0415 - why`)")
    return problems


def test_pinrank_layers_import_only_downwards():
    assert violations(ROOT) == []


def test_every_function_level_import_says_why():
    folders = ("pinrank", "client/src/pinrank_client", "reliability", "loadtest", "testkit")
    assert unexplained_function_imports(ROOT, folders) == []


@pytest.mark.parametrize(("path", "source", "why"), [
    ("pinrank/serving/x.py", "from pinrank.export.publish import republish\n", "serving may import only"),
    ("pinrank/serving/x.py", "import torch\n", "serving may import only the standard library"),
    ("pinrank/models/x.py", "from pinrank.train.common import seed_everything\n", "models may import only"),
    ("pinrank/backend/x.py", "import pandas\n", "backend may import only the standard library"),
    ("pinrank/backend/x.py", "import torch\n", "not with the backend"),
    ("pinrank/backend/torchscript_ranker.py", "import onnxruntime\n", "not with the backend"),
    ("pinrank/backend/x.py", "from pinrank.backend.torchscript_ranker import TorchScriptRanker\n",
     "a runtime module is imported when a ranker loads"),
    ("pinrank/backend/x.py", "from pinrank_client.admin import ADMIN_HEADER\n", "are vendored with the backend"),
    ("pinrank/backend/x.py", "from pinrank.repository import layout\n", "backend may import only itself"),
    ("pinrank/export/x.py", "from reliability import faults\n", "checkout-only harnesses"),
    ("pinrank/data/x.py", "from click.testing import CliRunner\n", "test tooling"),
    ("pinrank/repository/python_models/x.py", "from pinrank.repository.layout import STEP_MODELS\n",
     "python_models may import only"),
])
def test_a_broken_rule_is_reported(tmp_path, path, source, why):
    target = tmp_path / path
    target.parent.mkdir(parents=True)
    target.write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1 and why in found[0], found


def test_an_unexplained_function_import_is_reported(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        "def f():\n"
        "    import torch  # noqa: PLC0415 - keeps `pinrank --help` free of torch\n"
        "    import json\n"
        "    import os  # noqa: PLC0415\n"
    )
    found = unexplained_function_imports(tmp_path, ("pkg",))
    assert [f.split(":")[1] for f in found] == ["3", "4"], found


@pytest.mark.parametrize(("module", "absent"), [
    ("pinrank.serving.cli", "torch"),  # the host-side server and its probe run where torch is not installed
    ("pinrank.backend.preprocess", "torch"),  # what Triton's stub imports
    ("pinrank.repository.layout", "torch"),
    ("pinrank.cli", "torch"),  # `pinrank --help` stays fast
    ("pinrank_client", "pinrank"),
])
def test_cheap_imports_stay_cheap(module, absent):
    code = (f"import sys, {module}; "
            f"sys.exit(int(any(m == {absent!r} or m.startswith({absent!r} + '.') for m in sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0, \
        f"importing {module} imports {absent}"
