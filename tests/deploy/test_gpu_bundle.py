"""The GPU bundle (deploy/gpu_bundle.py) and the check it carries
(deploy/gpu/gpu_check.py), on this machine's CPU.

The GPU machine has torch but no tritonserver, tritonclient or registry, so
what runs there must run from the bundle alone. Here: the bundle is built
from the test pipeline's export, unpacked into an empty folder, and its own
server (3.11 stub, this venv's interpreter for torch/onnxruntime) serves the
gpu profile through its `cpu` config variant; answers are compared with the
cpu profile served by `pinrank serve`'s code. The check runs in its CPU mode,
and once with a forced mismatch, which its parity step must report. The
numpy-2 trap of the Python-backend stub is reproduced with an interpreter
whose numpy is 2.x, where wheels can be had (skipped otherwise).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from click.testing import CliRunner

from pinrank.cli import main as pinrank_main
from pinrank.export.cli import export as export_command
from pinrank.serving.health import find_server_pid, stub_processes
from pinrank.serving.tritonserver import free_ports
from pinrank_client import ModelStats, RankedItem, RankingClient, RankResponse

ROOT = Path(__file__).resolve().parents[2]


def _module(name: str, path: Path) -> ModuleType:
    """Import a deploy/ script as a module (deploy/ is no package)."""
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # the scripts import their sibling triton_launch
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tl = _module("triton_launch", ROOT / "deploy" / "gpu" / "triton_launch.py")
check = _module("gpu_check", ROOT / "deploy" / "gpu" / "gpu_check.py")
builder = _module("gpu_bundle", ROOT / "deploy" / "gpu_bundle.py")
TRITON = Path(importlib.util.find_spec("pytriton").origin).parent / "tritonserver"  # type: ignore[arg-type]
LIBS = TRITON.parent.parent / "nvidia_pytriton.libs"


# --- the builder's parts ---------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf is not installed")
def test_elf_needed_reads_what_readelf_reads():
    for path in (TRITON / "bin" / "tritonserver", TRITON / "backends" / "python" / "libtriton_python.so"):
        out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
        expected = [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]
        assert builder.elf_needed(path) == expected


def test_the_closure_is_the_servers_libraries_and_leaves_the_base_system_out():
    stubs = [TRITON / "python_backend_stubs" / v / "triton_python_backend_stub" for v in ("3.11", "3.12")]
    closure = builder.library_closure([TRITON / "bin" / "tritonserver",
                                       TRITON / "backends" / "python" / "libtriton_python.so", *stubs], LIBS)
    names = set(closure.libs)
    assert any(n.startswith("libtritonserver") for n in names) and any(n.startswith("libcudart") for n in names)
    assert any(n.startswith("libicudata") for n in names)  # libxml2 -> libicuuc -> libicudata: all loaded
    assert not any(n.startswith("libpython3") for n in names)  # the 3.13 stub's libpython is not wanted
    assert {"libc.so.6", "libstdc++.so.6", "libz.so.1"} <= set(closure.system)
    assert closure.libpython == ["libpython3.11.so.1.0", "libpython3.12.so.1.0"]


def test_an_unknown_library_fails_the_closure(tmp_path):
    with pytest.raises(builder.BundleError, match="neither in"):
        builder.library_closure([TRITON / "bin" / "tritonserver"], tmp_path)


def test_a_wheel_unpacks_as_pip_target_lays_it_out_without_tests_or_bytecode(tmp_path):
    wheel = tmp_path / "pkg-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in ("pkg/__init__.py", "pkg/tests/test_pkg.py", "pkg/__pycache__/x.cpython-312.pyc",
                     "pkg/_ext.so", "pkg-1.0.data/platlib/pkg_extra.py", "pkg-1.0.data/scripts/tool",
                     "pkg-1.0.dist-info/METADATA"):
            zf.writestr(name, "x")
    target = tmp_path / "site"
    assert builder.unpack_wheel(wheel, target) == 4
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == [
        "pkg-1.0.dist-info/METADATA", "pkg/__init__.py", "pkg/_ext.so", "pkg_extra.py"]


def test_a_cached_wheel_is_found_by_its_normalised_name(tmp_path):
    (tmp_path / "zope_event-6.2-py3-none-any.whl").write_bytes(b"")
    assert builder.cached_wheel(tmp_path, "zope.event", "6.2") is not None
    assert builder.cached_wheel(tmp_path, "zope.event", "6.3") is None


# --- the launcher's numpy<2 prefix --------------------------------------------------------------


def test_the_numpy1_prefix_puts_the_bundles_numpy_first_for_an_isolated_interpreter(tmp_path):
    """The stub runs Python isolated (PYTHONPATH ignored) from the prefix of the
    first python3 on PATH: that prefix must import the bundle's numpy, and the
    interpreter's own packages after it."""
    fake = tmp_path / "bundle" / tl.NUMPY1_DIR / tl.cp_tag(f"{sys.version_info[0]}.{sys.version_info[1]}") / "numpy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '1.0-bundled'\n")
    py = tl.probe_python(sys.executable)
    env = tl.server_env(tmp_path / "bundle", py, numpy1=True, base={"PATH": "/usr/bin:/bin"})
    python3 = Path(env["PATH"].split(":")[0]) / "python3"
    out = subprocess.run([str(python3), "-I", "-c", "import numpy, click; print(numpy.__version__)"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1.0-bundled"
    plain = tl.server_env(tmp_path / "bundle", py, numpy1=False, base={"PATH": "/usr/bin:/bin"})
    assert plain["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert "PYTHONPATH" not in plain  # the stub would ignore it


# --- the check's parts ---------------------------------------------------------------------------


def _response(*items: tuple[int, float]) -> RankResponse:
    return RankResponse([RankedItem(i, u, dict.fromkeys(("save", "click", "closeup", "hide"), 0.5))
                         for i, u in items], "pinrank", "1", 1.0)


def test_compare_allows_near_ties_and_reports_real_differences():
    same = check.compare(_response((1, 0.9), (2, 0.5)), _response((1, 0.9), (2, 0.5)), 1e-4)
    assert same["problems"] == [] and same["near_tie_swaps"] == 0
    tie = check.compare(_response((1, 0.50003), (2, 0.5)), _response((2, 0.50002), (1, 0.50001)), 1e-4)
    assert tie["problems"] == [] and tie["near_tie_swaps"] == 2
    off = check.compare(_response((1, 0.9), (2, 0.5)), _response((1, 0.9), (2, 0.501)), 1e-4)
    assert any("utility differs" in p for p in off["problems"])
    other = check.compare(_response((1, 0.9)), _response((3, 0.9)), 1e-4)
    assert any("different items" in p for p in other["problems"])
    assert check.tampered(_response((1, 0.5)), 0.25).items[0].utility == 0.75


@pytest.mark.parametrize(("problem", "numpy", "expected"), [
    ("request failed: ... input byte size mismatch for input 'context' for model 'ranker'. Expected 24, got 0",
     "2.5.2", True),
    ("output scores is empty", "2.4.6", True),
    ("output scores is empty", "1.26.4", False),  # not numpy's doing: no retry hides it
    ("request failed: connection refused", "2.5.2", False),
])
def test_the_numpy2_symptom_is_empty_tensors_under_numpy2(problem, numpy, expected):
    assert check.numpy2_symptom(problem, numpy) is expected


def test_step_times_are_means_over_the_interval_between_two_reads():
    def stats(model: str, requests: int, mean: float) -> ModelStats:
        return ModelStats(model, "1", requests, 0, requests, mean, 0.0, mean, 0.0, 2 * mean)

    before = [stats("ranker", 10, 1.0), stats("preprocess", 10, 0.5)]
    after = [stats("ranker", 30, 2.0), stats("preprocess", 10, 0.5), stats("postprocess", 4, 0.25)]
    assert check.step_times(before, after) == {
        "ranker": {"requests": 20, "queue_ms": 2.5, "compute_infer_ms": 2.5, "total_ms": 5.0},
        "postprocess": {"requests": 4, "queue_ms": 0.25, "compute_infer_ms": 0.25, "total_ms": 0.5},
    }


def test_summarize_gives_percentiles_and_throughput():
    out = check.summarize([float(i) for i in range(1, 101)], 1, "boom", 2.0)
    assert out["requests"] == 100 and out["errors"] == 1 and out["first_error"] == "boom"
    assert out["p50_ms"] == pytest.approx(50.5) and out["p99_ms"] == pytest.approx(99.01)
    assert out["throughput_rps"] == 50.0


# --- the bundle, built and run here ----------------------------------------------------------------


def _has_python_gpu_backend() -> bool:
    option = next(p for p in export_command.params if p.name == "gpu_backend")
    return "python" in option.type.choices  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def repositories(pipeline, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(gpu, cpu): the gpu profile on the Python backend when the export has it
    (its `cpu` variant serves it here), else the cpu profile in both places."""
    if not _has_python_gpu_backend():
        return pipeline.repository / "cpu", pipeline.repository / "cpu"
    out = tmp_path_factory.mktemp("gpu-export")
    args = ["export", "--ranker", pipeline.ranker, "--snapshot", pipeline.snapshot, "--data", pipeline.data,
            "--out", out / "repo", "--target", "all", "--gpu-backend", "python", "--results", out / "export.json"]
    result = CliRunner().invoke(pinrank_main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out / "repo" / "gpu", out / "repo" / "cpu"


def _unpack(archive: Path, into: Path) -> Path:
    into.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / tl.BUNDLE_NAME


def _build(repositories: tuple[Path, Path], out: Path, *extra: str) -> subprocess.CompletedProcess:
    gpu, cpu = repositories
    return subprocess.run([sys.executable, str(ROOT / "deploy" / "gpu_bundle.py"), "--repository", str(gpu),
                           "--cpu-repository", str(cpu), "--out", str(out), "--level", "0", *extra],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def bundle(repositories: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle as the GPU machine gets it, less the cp312 client wheels (this
    interpreter has its own), unpacked into an empty folder."""
    tmp = tmp_path_factory.mktemp("bundle")
    built = _build(repositories, tmp / "gpu_bundle.tar.xz", "--no-client-deps", "--max-mib", "200")
    assert built.returncode == 0, built.stdout + built.stderr
    assert "MiB compressed" in built.stdout and "left to the machine: " in built.stdout
    return _unpack(tmp / "gpu_bundle.tar.xz", tmp / "unpacked")


def _config_name(root: Path) -> str | None:
    return "cpu" if any((root / "repository" / "gpu").glob("*/configs/cpu.pbtxt")) else None


def _clean_env() -> dict[str, str]:
    """No path of this checkout in the environment (pytest puts none there; a caller might)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OUT")}


@pytest.mark.slow
@pytest.mark.triton
def test_the_bundle_is_self_contained(bundle: Path):
    manifest = tl.read_manifest(bundle)
    assert set(manifest["files"]) == {str(p.relative_to(bundle)) for p in bundle.rglob("*")
                                      if p.is_file() and p.name != tl.MANIFEST}
    assert manifest["stubs"] == ["3.11", "3.12"] and set(manifest["profiles"]) == {"gpu", "cpu"}
    assert (bundle / "repository" / "gpu" / "pinrank" / "1").is_dir()  # the ensemble's empty version survives
    for path in bundle.rglob("*"):
        assert not path.is_symlink(), path
        if path.suffix in (".py", ".json", ".pbtxt", ".txt"):
            assert str(ROOT) not in path.read_text(errors="replace"), f"{path} names the checkout"


@pytest.mark.slow
@pytest.mark.triton
def test_the_bundles_own_server_ranks_like_the_cpu_profile(bundle: Path, triton_server, tmp_path):
    """Started by the bundle's launcher from the unpacked folder alone: its
    tritonserver, libraries, backend and 3.11 stub; the answer matches the cpu
    profile served by `pinrank serve`'s code."""
    http, grpc, metrics = free_ports(3)
    cmd = [sys.executable, str(bundle / "triton_launch.py"), "--profile", "gpu", "--python", sys.executable,
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
           "--log", str(tmp_path / "server.log")]
    config = _config_name(bundle)
    if config:
        cmd += ["--model-config-name", config]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_clean_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not _ready(http):
            assert proc.poll() is None, f"launcher exited {proc.returncode}: {proc.stderr.read()}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.2)
        server_pid = find_server_pid(http)
        assert server_pid is not None
        assert Path(os.readlink(f"/proc/{server_pid}/exe")).is_relative_to(bundle)
        stubs = stub_processes(server_pid)
        assert stubs and all(Path(os.readlink(f"/proc/{s.pid}/exe")).is_relative_to(bundle) for s in stubs)

        vocab = check.Vocab.load(bundle / "repository" / "gpu")
        request = check.make_requests(vocab, 40, 30, 1, seed=3, top_k=10)[0]
        with RankingClient(f"127.0.0.1:{grpc}", protocol="grpc") as ours, \
                RankingClient(triton_server.grpc_url, protocol="grpc") as reference:
            got, want = ours.rank_request(request), reference.rank_request(request)
        assert got.item_ids == want.item_ids
        np.testing.assert_allclose([i.utility for i in got], [i.utility for i in want], atol=1e-4)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _run_check(bundle: Path, out: Path, *args: str, python: str = sys.executable) -> tuple[int, dict, str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([python, str(bundle / "gpu_check.py"), "--mode", "cpu", "--python", python,
                           "--out", str(out), *args], capture_output=True, text=True, env=_clean_env(),
                          cwd=out.parent, timeout=600)
    return proc.returncode, json.loads(out.read_text()), proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.triton
def test_the_check_runs_on_cpu_and_writes_its_results(bundle: Path, tmp_path):
    rc, res, log = _run_check(bundle, tmp_path / "results" / "gpu.json", "--candidates", "20,60",
                              "--concurrency", "1,2", "--requests", "6", "--parity-requests", "3",
                              "--cell-seconds", "1")
    assert rc == 0, log
    assert res["ok"] is True and res["failures"] == [] and res["mode"] == "cpu"
    assert res["servers"]["gpu"]["config_name"] == _config_name(bundle)
    assert res["servers"]["gpu"]["attempts"][0]["probe"] == "ok" and res["numpy2_empty_outputs"] is False
    parity = res["parity"]
    assert parity["ok"] and parity["requests"] == 3 and parity["max_utility_diff"] <= 1e-4
    cells = res["latency"]
    assert len(cells) == 2 * 2 * 2 * 2  # protocols x N x clients x profiles
    for cell in cells:
        assert cell["errors"] == 0 and cell["requests"] > 0, cell
        assert 0 < cell["p50_ms"] <= cell["p99_ms"]
        assert cell["steps"]["ranker"]["requests"] >= cell["requests"]  # Triton's own account of the cell
        assert 0 < cell["steps"]["ranker"]["compute_infer_ms"] < cell["p99_ms"]
    assert {(c["protocol"], c["candidates"], c["clients"]) for c in res["comparison"]} == {
        (p, n, c) for p in ("grpc", "http") for n in (20, 60) for c in (1, 2)}
    # The client's packages are the bundle's copies, not this checkout's.
    for module in ("pinrank_client", "tritonclient"):
        assert Path(res["packages"][module]).is_relative_to(bundle)
    assert (tmp_path / "results" / "logs" / "tritonserver-gpu.log").exists()
    # The in-process graphs benchmark ran on the bundle's own ranker; without CUDA it times the CPU only.
    graphs = res["cuda_graphs"]
    assert "error" not in graphs, graphs
    assert [r["candidates"] for r in graphs["rows"]] == [20, 60] and graphs["parity_ok"] is True
    assert all(r["cpu"]["p50_ms"] > 0 for r in graphs["rows"])
    if graphs["device"] is None:
        assert graphs["graphs"].startswith("skipped")


@pytest.mark.slow
@pytest.mark.triton
def test_a_forced_mismatch_fails_the_parity_check(bundle: Path, tmp_path):
    rc, res, log = _run_check(bundle, tmp_path / "gpu.json", "--tamper-scores", "0.01", "--candidates", "20",
                              "--concurrency", "1", "--protocols", "grpc", "--requests", "3",
                              "--parity-requests", "2", "--cell-seconds", "1")
    assert rc == 1, log
    assert res["ok"] is False and "parity" in res["failures"]
    assert res["parity"]["ok"] is False and res["parity"]["tampered_by"] == 0.01
    assert any("utility differs" in f for f in res["parity"]["failures"])
    assert "parity FAILED" in log


@pytest.mark.slow
@pytest.mark.triton
def test_a_server_that_does_not_start_fails_the_check_with_its_log(bundle: Path, tmp_path):
    broken = shutil.copytree(bundle, tmp_path / tl.BUNDLE_NAME, symlinks=True)
    config = broken / "repository" / "cpu" / "ranker" / "config.pbtxt"
    config.write_text(config.read_text() + "\nnot_a_field: 1\n")
    rc, res, log = _run_check(broken, tmp_path / "gpu.json", "--candidates", "20", "--concurrency", "1")
    assert rc == 1
    assert "[cpu] SERVER DID NOT START" in log and "not_a_field" in log  # Triton's own complaint, shown
    assert res["ok"] is False and any(f.startswith("cpu:") for f in res["failures"])
    assert "error" in res["servers"]["cpu"]["attempts"][0]
    assert "parity" not in res and "latency" not in res


@pytest.mark.slow
@pytest.mark.triton
def test_a_stopped_check_stops_its_servers_and_keeps_what_ran(bundle: Path, tmp_path):
    """A device call's time limit sends SIGTERM: the servers (sessions of their
    own) must not outlive the check, and the results must say it was cut."""
    out = tmp_path / "gpu.json"
    proc = subprocess.Popen([sys.executable, str(bundle / "gpu_check.py"), "--mode", "cpu", "--out", str(out),
                             "--candidates", "20", "--concurrency", "1", "--requests", "100000",
                             "--cell-seconds", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_clean_env(), cwd=tmp_path)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # until the first latency cell is under way
        seen.append(line)
        if line.startswith("profile "):
            break
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, "".join(seen) + rest
    res = json.loads(out.read_text())
    assert res["ok"] is False and any("stopped before the end" in f for f in res["failures"])
    assert res["parity"]["ok"] is True  # what ran before the signal is kept
    assert _running_from(bundle) == []


def _running_from(folder: Path) -> list[str]:
    """Command lines of live processes that name `folder` (a zombie's is empty)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if str(folder) in text:
            found.append(text.replace("\0", " ")[:200])
    return found


@pytest.mark.slow
def test_gpu_mode_without_a_gpu_says_so_before_starting_anything(bundle: Path, tmp_path):
    proc = subprocess.run([sys.executable, str(bundle / "gpu_check.py"), "--out", str(tmp_path / "gpu.json")],
                          capture_output=True, text=True, env=_clean_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert res["mode"] == "gpu" and "no NVIDIA GPU" in res["failures"][0] and "servers" not in res


@pytest.mark.slow
@pytest.mark.triton
def test_a_bundle_over_its_limit_is_not_left_behind(repositories, tmp_path):
    out = tmp_path / "gpu_bundle.tar.xz"
    built = _build(repositories, out, "--no-client-deps", "--no-numpy1", "--max-mib", "1")
    assert built.returncode != 0 and "over the 1 MiB limit" in built.stdout + built.stderr
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.triton
def test_a_changed_ranker_is_not_bundled(repositories, tmp_path):
    gpu = shutil.copytree(repositories[0], tmp_path / "gpu")
    ranker = next(gpu.glob("ranker/*/ranker.pt"))
    ranker.write_bytes(ranker.read_bytes() + b"\0")
    built = _build((gpu, repositories[1]), tmp_path / "b.tar.xz", "--no-client-deps", "--no-numpy1")
    assert built.returncode != 0 and "changed after export" in built.stdout + built.stderr


# --- the numpy-2 trap, as on the GPU machine ----------------------------------------------------------


def _pip_download(dest: Path, *requirements: str) -> bool:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", version, "--implementation", "cp",
           *[a for p in builder.PLATFORMS for a in ("--platform", p)], "-d", str(dest), *requirements]
    return subprocess.run(cmd, capture_output=True, timeout=600).returncode == 0


@pytest.mark.slow
@pytest.mark.triton
def test_numpy2_empty_tensors_are_named_and_cured_with_the_bundled_numpy1(repositories, tmp_path):
    """The GPU machine's interpreter has numpy 2 and no client packages. Here:
    a venv with numpy 2 that sees this venv's torch/onnxruntime (.pth), a
    bundle with the client's compiled packages and numpy 1 for this CPython.
    The check must name the empty tensors, restart with numpy<2 and pass."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    cache = tmp_path / "wheels" / tl.cp_tag(version)
    if not _pip_download(cache, "numpy>=2,<3"):
        pytest.skip("no numpy 2 wheel to be had (no package index)")
    built = _build(repositories, tmp_path / "b.tar.xz", "--client-python", version, "--wheel-cache",
                   str(tmp_path / "wheels"), "--stubs", version, "--max-mib", "200")
    if built.returncode != 0 and "pip download failed" in built.stdout + built.stderr:
        pytest.skip("the client wheels could not be downloaded")
    assert built.returncode == 0, built.stdout + built.stderr
    bundle = _unpack(tmp_path / "b.tar.xz", tmp_path / "unpacked")

    venv = tmp_path / "np2"
    base = Path(sys.base_prefix) / "bin" / f"python{version}"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    with zipfile.ZipFile(next(cache.glob("numpy-2*.whl"))) as zf:
        zf.extractall(site)
    ours = next(p for p in sys.path if p.endswith("site-packages") and (Path(p) / "torch").is_dir())
    (site / "zz-pinrank-venv.pth").write_text(ours + "\n")  # after numpy 2: torch, onnxruntime, click

    python = str(venv / "bin" / "python")
    rc, res, log = _run_check(bundle, tmp_path / "gpu.json", "--candidates", "20", "--concurrency", "1",
                              "--protocols", "grpc,http", "--requests", "3", "--parity-requests", "2",
                              "--cell-seconds", "1", python=python)
    assert rc == 0, log
    assert res["machine"]["stub_numpy"].startswith("2.")
    assert "NUMPY 2 PROBLEM" in log and res["numpy2_empty_outputs"] is True
    for served in res["servers"].values():
        assert served["numpy1"] is True
        assert served["attempts"][0]["numpy2_empty_outputs"] is True and served["attempts"][1]["probe"] == "ok"
    assert res["parity"]["ok"] is True
    for module in ("gevent", "grpc", "rapidjson", "pinrank_client"):  # the bundle's, under numpy 2
        assert Path(res["packages"][module]).is_relative_to(bundle), module
