"""Build the GPU bundle: one compressed file that serves and measures the
exported repositories on a machine that has a GPU and a torch interpreter but
no tritonserver, no tritonclient and no package registry.

    .venv/bin/python deploy/gpu_bundle.py --repository model_repository/gpu --out build/gpu_bundle.tar.xz

What goes in (MANIFEST.json inside lists every file and its size):
- the nvidia-pytriton wheel's tritonserver, and the shared libraries it and
  the Python backend load, as the closure of their DT_NEEDED entries over the
  wheel's nvidia_pytriton.libs, minus BASE_SYSTEM (glibc, the GCC runtime,
  zlib: every image that runs Python and torch has them, and glibc must be the
  machine's own) and libpython (it must be the torch interpreter's own);
- the Python backend and the stubs of --stubs (3.12: the GPU machine's
  torch interpreter; 3.11: this venv, for the test here);
- the repositories: the gpu profile, and the cpu profile for the side-by-side;
- the check (deploy/gpu/gpu_check.py), the launcher (deploy/gpu/triton_launch.py),
  pinrank_client and tritonclient (pure Python);
- for the check's client on --client-python: the compiled packages the GPU
  machine lacks or may have in versions tritonclient refuses (gevent,
  geventhttpclient, rapidjson, grpcio, protobuf, ...), unpacked from
  manylinux wheels at the versions this venv runs;
- --numpy1: numpy<2 for the stub, in case numpy 2 empties its outputs there
  as it does with the 3.11 stub (docs: ENVIRONMENT.md); the check tries
  without it first and says which it needed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import click
from tritonclient.grpc import model_config_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))  # the bundle's own scripts live there

import triton_launch as layout  # noqa: E402

from pinrank.repository.integrity import IntegrityError, verify_repository  # noqa: E402
from pinrank.repository.pbtxt import read_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"triton_launch.py": ROOT / "deploy" / "gpu" / "triton_launch.py",
           "gpu_check.py": ROOT / "deploy" / "gpu" / "gpu_check.py",
           "cuda_graphs_bench.py": ROOT / "deploy" / "gpu" / "cuda_graphs_bench.py"}
#: NEEDED entries left to the machine, with why (docstring).
BASE_SYSTEM = {
    "libc.so.6": "glibc", "libm.so.6": "glibc", "libdl.so.2": "glibc", "libpthread.so.0": "glibc",
    "librt.so.1": "glibc", "libresolv.so.2": "glibc", "ld-linux-x86-64.so.2": "glibc",
    "libstdc++.so.6": "GCC runtime", "libgcc_s.so.1": "GCC runtime", "libz.so.1": "zlib",
}
LIBPYTHON = re.compile(r"^libpython3\.\d+\.so\.1\.0$")
#: The check's client dependencies on the GPU machine: tritonclient[grpc,http]'s, less numpy and ml-dtypes
#: (compiled against the machine's numpy, which has them). The small pure-Python ones it has too
#: (typing-extensions, urllib3, certifi) come along all the same: a missing one costs a device run.
CLIENT_DEPS = ("gevent", "greenlet", "geventhttpclient", "zope.event", "zope.interface", "brotli",
               "python-rapidjson", "grpcio", "protobuf", "typing-extensions", "urllib3", "certifi")
#: The last numpy 1.x: it has cp312 wheels.
NUMPY1 = "1.26.4"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")
_SKIP_PARTS = {"__pycache__", "tests"}


class BundleError(click.ClickException):
    pass


# --- shared libraries ------------------------------------------------------------------------


def elf_needed(path: Path) -> list[str]:
    """The DT_NEEDED names of a 64-bit little-endian ELF file (what `readelf -d` lists)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BundleError(f"{path}: not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD: maps file offsets to addresses
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return []
    entries = [struct.unpack_from("<qQ", data, off) for off in range(dynamic[0], sum(dynamic), 16)]
    strtab_addr = next(v for tag, v in entries if tag == 5)  # DT_STRTAB, an address
    strtab = next(off + strtab_addr - vaddr for vaddr, off, size in loads if vaddr <= strtab_addr < vaddr + size)
    names = []
    for tag, value in entries:
        if tag == 0:  # DT_NULL ends the table
            break
        if tag == 1:  # DT_NEEDED: an offset into the string table
            start = strtab + value
            names.append(data[start:data.index(b"\0", start)].decode())
    return names


@dataclass(frozen=True)
class Closure:
    libs: dict[str, Path]  # name -> file in the wheel's libs folder
    system: dict[str, str]  # name -> why the machine provides it
    libpython: list[str]


def library_closure(roots: list[Path], libs_dir: Path) -> Closure:
    """Every library `roots` load, transitively, from `libs_dir`; fails on a
    NEEDED entry that is neither there, nor base system, nor libpython."""
    found: dict[str, Path] = {}
    system: dict[str, str] = {}
    pythons: set[str] = set()
    todo = list(roots)
    while todo:
        for name in elf_needed(todo.pop()):
            if name in found or name in system:
                continue
            if (libs_dir / name).exists():
                found[name] = libs_dir / name
                todo.append(libs_dir / name)
            elif name in BASE_SYSTEM:
                system[name] = BASE_SYSTEM[name]
            elif LIBPYTHON.match(name):
                pythons.add(name)
            else:
                raise BundleError(f"{name} is needed but neither in {libs_dir} nor a known base-system library")
    return Closure(dict(sorted(found.items())), dict(sorted(system.items())), sorted(pythons))


def max_symbol_versions(paths: list[Path]) -> dict[str, str]:
    """The newest GLIBC_ and GLIBCXX_ symbol versions the files ask for: the
    machine's glibc and libstdc++ must be at least these."""
    best: dict[str, tuple[int, ...]] = {}
    for path in paths:
        for m in re.finditer(rb"(GLIBC|GLIBCXX)_(\d+(?:\.\d+)+)\0", path.read_bytes()):
            kind, version = m.group(1).decode(), tuple(int(x) for x in m.group(2).split(b"."))
            best[kind] = max(best.get(kind, version), version)
    return {k: ".".join(map(str, v)) for k, v in sorted(best.items())}


# --- wheels ------------------------------------------------------------------------------------


def _wheel_stem(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def cached_wheel(cache: Path, name: str, version: str) -> Path | None:
    stem = f"{_wheel_stem(name)}-{version}-"
    return next((p for p in sorted(cache.glob("*.whl")) if p.name.lower().startswith(stem)), None)


def fetch_wheels(requirements: list[tuple[str, str]], cache: Path, python_version: str) -> list[Path]:
    """manylinux x86-64 wheels for CPython `python_version`, from `cache` or downloaded into it."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [f"{n}=={v}" for n, v in requirements if cached_wheel(cache, n, v) is None]
    if missing:
        click.echo(f"  downloading {len(missing)} wheel(s) for CPython {python_version}: {' '.join(missing)}")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp",
               *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(cache), *missing]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BundleError(f"pip download failed:\n{proc.stderr[-2000:]}")
    wheels = []
    for name, version in requirements:
        wheel = cached_wheel(cache, name, version)
        if wheel is None:
            raise BundleError(f"no {name}=={version} wheel for CPython {python_version} in {cache}")
        wheels.append(wheel)
    return wheels


def unpack_wheel(wheel: Path, target: Path) -> int:
    """Install `wheel` into `target` the way `pip install --target` lays out
    packages (purelib and platlib merged; scripts, headers and data left out),
    without tests or bytecode. Returns the files written."""
    count = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            if info.is_dir() or _SKIP_PARTS.intersection(parts[:-1]) or parts[-1].endswith(".pyc"):
                continue
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            dest = target.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(info))
            count += 1
    return count


# --- staging ---------------------------------------------------------------------------------


def _copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), symlinks=False)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BundleError(f"package {name} is not importable here")
    return Path(next(iter(spec.submodule_search_locations)))


def profile_summary(repo: Path) -> dict:
    """Per model: backend/platform, instance groups and config variants."""
    models = {}
    for cfg in sorted(repo.glob("*/config.pbtxt")):
        mc = read_config(cfg)
        models[cfg.parent.name] = {
            "backend": mc.backend or mc.platform,
            "instances": [f"{g.count}x{model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)}"
                          for g in mc.instance_group],
            "variants": sorted(p.stem for p in (cfg.parent / "configs").glob("*.pbtxt")),
        }
    return models


def stage(stage_root: Path, repos: dict[str, Path], stubs: list[str], client_python: str | None,
          numpy1: bool, wheel_cache: Path) -> dict:
    """Lay the bundle out under stage_root; returns the manifest (files added last)."""
    import pytriton  # noqa: PLC0415 - only the builder needs the wheel; the bundle's scripts never import it

    triton = Path(pytriton.__file__).resolve().parent / "tritonserver"
    libs_dir = triton.parent.parent / "nvidia_pytriton.libs"
    binary, backend_lib = triton / "bin" / "tritonserver", triton / "backends" / "python" / "libtriton_python.so"
    stub_files = {v: triton / "python_backend_stubs" / v / layout.STUB_NAME for v in stubs}
    for v, path in stub_files.items():
        if not path.exists():
            raise BundleError(f"the wheel has no stub for CPython {v} ({path})")

    click.echo("[1/5] tritonserver, Python backend, stubs and their libraries")
    closure = library_closure([binary, backend_lib, *stub_files.values()], libs_dir)
    (stage_root / layout.LIB_DIR).mkdir(parents=True)
    for name, path in closure.libs.items():
        shutil.copy2(path, stage_root / layout.LIB_DIR / name)
    (stage_root / layout.SERVER_BIN).parent.mkdir(parents=True)
    shutil.copy2(binary, stage_root / layout.SERVER_BIN)
    (stage_root / layout.PY_BACKEND_DIR).mkdir(parents=True)
    for src in (backend_lib, triton / "backends" / "python" / "triton_python_backend_utils.py"):
        shutil.copy2(src, stage_root / layout.PY_BACKEND_DIR / src.name)
    for v, path in stub_files.items():
        (stage_root / layout.STUBS_DIR / v).mkdir(parents=True)
        shutil.copy2(path, stage_root / layout.STUBS_DIR / v / layout.STUB_NAME)

    click.echo(f"[2/5] repositories: {', '.join(f'{k} <- {v}' for k, v in repos.items())}")
    profiles = {}
    for profile, repo in repos.items():
        try:
            verify_repository(repo)  # a bundle must not carry weights that changed after their parity gate
        except IntegrityError as exc:
            raise BundleError(f"{repo}: {exc}") from None
        _copy_tree(repo, stage_root / layout.REPOSITORIES_DIR / profile)
        profiles[profile] = profile_summary(repo)

    click.echo("[3/5] scripts, pinrank_client and tritonclient")
    for name, src in SCRIPTS.items():
        shutil.copy2(src, stage_root / name)
    for package in ("pinrank_client", "tritonclient"):
        _copy_tree(_package_dir(package), stage_root / layout.CLIENT_PY_DIR / package)

    client_deps: dict[str, str] = {}
    if client_python:
        click.echo(f"[4/5] the client's compiled dependencies for CPython {client_python}")
        client_deps = {n: importlib.metadata.version(n) for n in CLIENT_DEPS}
        site = stage_root / layout.CLIENT_SITE_DIR / layout.cp_tag(client_python)
        for wheel in fetch_wheels(list(client_deps.items()), wheel_cache / layout.cp_tag(client_python),
                                  client_python):
            unpack_wheel(wheel, site)
        if numpy1:
            (wheel,) = fetch_wheels([("numpy", NUMPY1)], wheel_cache / layout.cp_tag(client_python), client_python)
            unpack_wheel(wheel, stage_root / layout.NUMPY1_DIR / layout.cp_tag(client_python))
    else:
        click.echo("[4/5] no client dependencies (--no-client-deps: the check runs on an interpreter that has them)")

    return {
        "bundle": layout.BUNDLE_NAME,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_commit": _git_commit(),
        "triton": {"nvidia_pytriton": importlib.metadata.version("nvidia-pytriton"),
                   "cuda_runtime": next((n for n in closure.libs if n.startswith("libcudart")), None),
                   "needs": {**max_symbol_versions([binary, backend_lib, *closure.libs.values()]),
                             "libpython": "the stub's interpreter's own (" + ", ".join(closure.libpython) + ")"},
                   "left_to_the_machine": closure.system},
        "stubs": stubs,
        "profiles": profiles,
        "client": {"tritonclient": importlib.metadata.version("tritonclient"),
                   "pinrank_client": importlib.metadata.version("pinrank-client"),
                   "site_python": client_python, "site": client_deps},
        "numpy1": {"python": client_python, "version": NUMPY1} if client_python and numpy1 else None,
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None


def component(rel: str) -> str:
    """The manifest's grouping of a bundle path."""
    parts = rel.split("/")
    if parts[0] in ("triton", layout.REPOSITORIES_DIR, layout.CLIENT_SITE_DIR, layout.NUMPY1_DIR):
        return "/".join(parts[:2]) if len(parts) > 2 else parts[0]
    return parts[0] if len(parts) > 1 else "scripts"


def write_archive(stage_root: Path, out: Path, level: int) -> None:
    """tar.xz of stage_root (as BUNDLE_NAME/...): xz -T0 where installed (both cores), else lzma."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    # Folders too: Triton needs the ensemble's empty version folder.
    entries = sorted(stage_root.rglob("*"))
    xz = shutil.which("xz")
    with open(tmp, "wb") as raw:
        proc, sink = None, None
        if xz:
            proc = subprocess.Popen([xz, f"-{level}", "-T0", "-c"], stdin=subprocess.PIPE, stdout=raw)
            sink = proc.stdin
        sink = sink or lzma.open(raw, "wb", preset=level)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path in entries:
                tar.add(path, arcname=f"{layout.BUNDLE_NAME}/{path.relative_to(stage_root)}", recursive=False)
        sink.close()
        if proc is not None and proc.wait() != 0:
            raise BundleError(f"xz failed with {proc.returncode}")
    os.replace(tmp, out)


def mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--repository", type=click.Path(path_type=Path, file_okay=False, exists=True),
              default=Path("model_repository/gpu"), show_default=True,
              help="The gpu profile (pinrank export --target gpu --gpu-backend python).")
@click.option("--cpu-repository", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The cpu profile, served beside it.  [default: the `cpu` folder next to --repository]")
@click.option("--no-cpu-repository", is_flag=True, help="Bundle the gpu profile alone.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=Path("build/gpu_bundle.tar.xz"),
              show_default=True)
@click.option("--stubs", default="3.11,3.12", show_default=True,
              help="CPython versions whose Python-backend stub to carry (3.12: the GPU machine; 3.11: here).")
@click.option("--client-python", default="3.12", show_default=True,
              help="CPython version of the interpreter that runs the check on the GPU machine.")
@click.option("--client-deps/--no-client-deps", default=True, show_default=True,
              help="Carry the check's compiled client dependencies for --client-python (needs pip's index "
                   "here, or the wheels in --wheel-cache).")
@click.option("--numpy1/--no-numpy1", default=True, show_default=True,
              help=f"Carry numpy {NUMPY1} for --client-python, for the stub should numpy 2 empty its outputs.")
@click.option("--wheel-cache", type=click.Path(path_type=Path, file_okay=False), default=Path("build/gpu_wheels"),
              show_default=True)
@click.option("--level", type=click.IntRange(0, 9), default=9, show_default=True, help="xz preset.")
@click.option("--max-mib", type=float, default=60.0, show_default=True,
              help="Fail when the compressed bundle is larger (a device call carries 64 MiB with the tree).")
def main(repository: Path, cpu_repository: Path | None, no_cpu_repository: bool, out: Path, stubs: str,
         client_python: str, client_deps: bool, numpy1: bool, wheel_cache: Path, level: int,
         max_mib: float) -> None:
    """Build the carry bundle for the GPU check (deploy/gpu_check.sh runs it there)."""
    repos = {"gpu": repository.resolve()}
    if not no_cpu_repository:
        cpu = (cpu_repository or repository.resolve().parent / "cpu").resolve()
        if not cpu.is_dir():
            raise BundleError(f"no cpu profile at {cpu}: pass --cpu-repository or --no-cpu-repository")
        repos["cpu"] = cpu
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmp:
        stage_root = Path(tmp) / layout.BUNDLE_NAME
        stage_root.mkdir()
        manifest = stage(stage_root, repos, [s.strip() for s in stubs.split(",") if s.strip()],
                         client_python if client_deps else None, numpy1, wheel_cache)
        files = sorted(p for p in stage_root.rglob("*") if p.is_file())
        manifest["files"] = {str(p.relative_to(stage_root)): p.stat().st_size for p in files}
        (stage_root / layout.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        click.echo(f"[5/5] compressing {len(files) + 1} files (xz -{level}) into {out}")
        write_archive(stage_root, out, level)
    size = out.stat().st_size
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rel, n in manifest["files"].items():
        groups[component(rel)][0] += 1
        groups[component(rel)][1] += n
    click.echo(f"\n{'component':<28} {'files':>6} {'MiB':>8}  (uncompressed)")
    for name, (count, n) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        click.echo(f"{name:<28} {count:>6} {mib(n):>8}")
    raw = sum(manifest["files"].values())
    click.echo(f"{'total':<28} {len(manifest['files']):>6} {mib(raw):>8}")
    click.echo(f"\nleft to the machine: {', '.join(manifest['triton']['left_to_the_machine'])}; "
               f"{manifest['triton']['needs']['libpython']}")
    needs = [f"{k} {v}" for k, v in manifest["triton"]["needs"].items() if k != "libpython"]
    click.echo(f"needs at least: {', '.join(needs)}")
    click.echo(f"{out}: {mib(size)} MiB compressed (limit {max_mib:g} MiB), "
               f"built in {time.monotonic() - started:.0f}s")
    if size > max_mib * 2**20:
        out.unlink()
        raise BundleError(f"the bundle is {mib(size)} MiB, over the {max_mib:g} MiB limit: removed {out} "
                          "(drop --numpy1, a stub, or the cpu profile)")


if __name__ == "__main__":
    main()
