"""Packaging promises: a light import, the public API in one place, and a
client that installs on its own (no torch, no server package)."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import pinrank_client

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"

# What pip prints when it cannot reach an index, as opposed to a real
# packaging error (a bad pin, a broken pyproject), which must fail the test.
_NETWORK_TROUBLE = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "Could not fetch URL",
    "Connection broken",
)


def test_import_pulls_in_neither_torch_nor_the_server_nor_tritonclient():
    code = (
        "import sys, pinrank_client, pinrank_client.cli;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'pinrank', 'tritonclient', 'grpc', 'aiohttp')];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_public_api():
    for name in (
        "RankingClient",
        "AsyncRankingClient",
        "Action",
        "ActionHistory",
        "RankRequest",
        "RankedItem",
        "RankResponse",
        "ModelStats",
        "PinrankError",
        "InvalidRequestError",
        "ServerUnavailableError",
        "RequestTimeoutError",
        "ModelNotReadyError",
        "ServerError",
        "RetryEvent",
        "RetryPolicy",
        "parse_urls",
        "schema",
        "validate_request",
        "errors",
    ):
        assert name in pinrank_client.__all__ and hasattr(pinrank_client, name), name


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_client_installs_alone_in_a_clean_virtualenv(tmp_path):
    """`pip install ./client` into a fresh venv: the CLI works, torch is absent.

    pip's own configuration and cache are used (a local wheel cache or mirror
    makes this fast and offline); only a pip that cannot reach any index
    skips the test, and it says so.
    """
    venv = tmp_path / "venv"
    # The project's environment must not leak in: no inherited module paths.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_INPUT"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, env=env)
    if made.returncode != 0 and "ensurepip" in made.stdout + made.stderr:
        pytest.skip(f"this Python cannot create virtualenvs with pip (no ensurepip): {made.stderr.strip()}")
    assert made.returncode == 0, made.stderr
    python, cli = venv / "bin" / "python", venv / "bin" / "pinrank-client"
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)

    # A copy, because setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path / "client"
    shutil.copytree(CLIENT_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    install = run(str(python), "-m", "pip", "install", "--progress-bar", "off", str(source), timeout=1200)
    if install.returncode != 0:
        output = install.stdout + install.stderr
        if any(sign in output for sign in _NETWORK_TROUBLE):
            tail = output.strip().splitlines()[-1]
            pytest.skip(f"pip cannot reach a package index to install ./client's dependencies: {tail}")
        pytest.fail(f"pip install ./client failed:\n{output[-4000:]}")

    probe = run(
        str(python),
        "-c",
        "import importlib.util as u, numpy, pinrank_client, tritonclient.grpc, tritonclient.http;"
        "print([m for m in ('torch', 'pinrank') if u.find_spec(m) is not None]);"
        "print(numpy.__version__); print(pinrank_client.__file__)",
    )
    assert probe.returncode == 0, probe.stderr
    missing, numpy_version, location = probe.stdout.split("\n")[:3]
    assert missing == "[]", f"the client pulled in {missing}"
    assert int(numpy_version.split(".")[0]) < 2  # the server's stub needs numpy<2; so does the contract
    assert Path(location).is_relative_to(venv), location  # the installed copy, not the checkout
    assert run(str(python), "-m", "pip", "show", "torch").returncode != 0
    check = run(str(python), "-m", "pip", "check")
    assert check.returncode == 0, check.stdout

    for args in (["--help"], ["rank", "--help"], ["health", "--help"], ["models", "--help"], ["stats", "--help"]):
        shown = run(str(cli), *args)
        assert shown.returncode == 0, shown.stderr
        assert "Usage: pinrank-client" in shown.stdout
    assert "--request-file" in run(str(cli), "rank", "--help").stdout
    # The transports work too: nothing listening is exit code 3 and one error line.
    down = run(str(cli), "health", "--url", f"127.0.0.1:{_closed_port()}", "--timeout", "2", "--retries", "0")
    assert down.returncode == 3, down.stdout + down.stderr
    assert down.stderr.startswith("error: ") and "is unavailable" in down.stderr
