"""Security defaults (docs/security.md): localhost binding, the admin key on
Triton's restricted APIs, weights-only checkpoints, manifest checksums."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from click.testing import CliRunner
from tritonclient.utils import InferenceServerException

from pinrank.cli import main
from pinrank.models.checkpoints import load_checkpoint, save_checkpoint
from pinrank.repository.integrity import (
    IntegrityError,
    verify_repository,
    verify_version,
)
from pinrank.serving.tritonserver import (
    RESTRICTED_APIS,
    Ports,
    ServerError,
    TritonServer,
    is_loopback,
    resolve_admin_key,
    running_server,
    write_admin_key_file,
)
from pinrank_client import ADMIN_HEADER, AccessDeniedError, RankingClient, admin_headers
from pinrank_client.errors import map_exception
from testkit.export_inputs import (
    make_export_inputs,  # tests/ is on sys.path via tests/conftest.py
)

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_operator_key(monkeypatch):
    monkeypatch.delenv("PINRANK_ADMIN_KEY", raising=False)


# --- launcher flags -------------------------------------------------------------------------


def flag(cmd: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in cmd if a.startswith(name + "=")]
    assert len(values) == 1, (name, cmd)
    return values[0]


def test_binds_localhost_and_restricts_admin_apis_by_default(tmp_path):
    server = TritonServer(tmp_path, Ports(1, 2, 3), admin_key=KEY)
    cmd = server.command()
    for option in ("--http-address", "--grpc-address", "--metrics-address"):
        assert flag(cmd, option) == "127.0.0.1"
    rule = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={KEY}"
    assert flag(cmd, "--http-restricted-api") == rule and flag(cmd, "--grpc-restricted-protocol") == rule
    assert {"model-repository", "shared-memory", "trace", "logging"} <= set(RESTRICTED_APIS)
    assert "model-config" not in RESTRICTED_APIS  # read-only, and what standard tools read first
    assert not {"inference", "health", "metadata"} & set(RESTRICTED_APIS)  # what the SDK calls
    assert flag(cmd, "--allow-sagemaker") == "false" and flag(cmd, "--allow-vertex-ai") == "false"
    assert not any(a.startswith("--model-control-mode") for a in cmd)  # none: no load/unload at all
    explicit = TritonServer(tmp_path, Ports(1, 2, 3), admin_key=KEY, model_control="explicit").command()
    assert flag(explicit, "--model-control-mode") == "explicit" and flag(explicit, "--load-model") == "*"
    assert server.admin_headers == admin_headers(KEY)
    assert KEY not in repr(server)


def test_admin_key_sources_in_order(tmp_path, monkeypatch):
    key_file = tmp_path / "keys" / "admin-key"
    generated, source = resolve_admin_key(None, key_file)
    assert source == "generated" and len(generated) == 64 and not key_file.exists()
    write_admin_key_file(key_file, generated)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert resolve_admin_key(None, key_file) == (generated, str(key_file))  # reused across restarts
    monkeypatch.setenv("PINRANK_ADMIN_KEY", KEY)
    assert resolve_admin_key(None, key_file) == (KEY, "$PINRANK_ADMIN_KEY")
    assert resolve_admin_key("f" * 20, key_file) == ("f" * 20, "given")


def test_unsafe_keys_and_key_files_are_refused(tmp_path):
    for bad in ("short", "has:colon-0123456789", "has=equals-0123456789", "has,comma-0123456789"):
        with pytest.raises(ServerError, match="16-256 characters"):
            resolve_admin_key(bad)
    open_file = tmp_path / "admin-key"
    open_file.write_text(KEY)
    open_file.chmod(0o644)
    with pytest.raises(ServerError, match="readable by others"):
        resolve_admin_key(None, open_file)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to hand a file to another uid")
def test_key_files_of_other_users_are_refused(tmp_path):
    theirs = tmp_path / "admin-key"
    theirs.write_text(KEY)
    theirs.chmod(0o600)
    os.chown(theirs, 12345, -1)
    with pytest.raises(ServerError, match="belongs to another user"):
        resolve_admin_key(None, theirs)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(ServerError, match="not a private directory"):
        write_admin_key_file(shared / "admin-key", KEY)


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_restricted_answers_map_to_access_denied_and_are_not_retryable():
    grpc = InferenceServerException(
        msg="This protocol is restricted, expecting header 'triton-grpc-protocol-pinrank-admin-key'",
        status="StatusCode.UNAVAILABLE")
    http = InferenceServerException(msg="This API is restricted, expecting header 'pinrank-admin-key'", status="403")
    for exc in (grpc, http):
        assert type(map_exception(exc)) is AccessDeniedError  # gRPC's UNAVAILABLE would otherwise be retried


# --- the real server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explicit_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("security")
    inputs = make_export_inputs(root / "inputs", num_items=120, num_users=40)
    result = CliRunner().invoke(main, ["export", *inputs.cli_args(), "--out", str(root / "repo"), "--target", "cpu",
                                       "--results", str(root / "export.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with running_server(root / "repo" / "cpu", model_control="explicit", log_path=root / "tritonserver.log") as srv:
        yield srv


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_control_needs_the_admin_key(explicit_server, protocol):
    if protocol == "grpc":
        client = grpcclient.InferenceServerClient(explicit_server.grpc_url)
    else:
        client = httpclient.InferenceServerClient(explicit_server.http_url)
    model = "postprocess"
    refused = [
        lambda h: client.get_model_repository_index(headers=h),
        lambda h: client.unload_model(model, headers=h),
        lambda h: client.load_model(model, headers=h),
        lambda h: client.get_system_shared_memory_status(headers=h),
        lambda h: client.get_trace_settings(headers=h),
        lambda h: client.get_log_settings(headers=h),
    ]
    for call in refused:
        for headers in (None, {ADMIN_HEADER: "wrong-key-0123456789"}, {"x-other": KEY}):
            with pytest.raises(InferenceServerException, match="restricted"):
                call(headers)
    assert client.is_model_ready(model)  # nothing was unloaded
    # Open without a key: what ranking clients and probes use.
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_model_metadata("pinrank") and client.get_inference_statistics("pinrank")
    assert client.get_model_config(model)  # read-only: what PyTriton, perf_analyzer and Triton's examples read
    # With the key: the repository index, unload and load work.
    admin = explicit_server.admin_headers
    index = client.get_model_repository_index(headers=admin, **({"as_json": True} if protocol == "grpc" else {}))
    rows = index.get("models", []) if isinstance(index, dict) else index
    assert model in {r["name"] for r in rows}
    client.unload_model(model, headers=admin)
    assert not client.is_model_ready(model)
    client.load_model(model, headers=admin)
    assert client.is_model_ready(model) and client.is_server_ready()
    client.close()


@pytest.mark.triton
def test_the_sdk_lists_models_with_the_key_only(explicit_server):
    for url in (f"grpc://{explicit_server.grpc_url}", f"http://{explicit_server.http_url}"):
        with RankingClient(url, retries=2) as client:
            with pytest.raises(AccessDeniedError, match="restricted"):
                client.list_models()
            assert client.check_contract() == []  # metadata stays open
        with RankingClient(url, headers=admin_headers(explicit_server.admin_key)) as client:
            assert {m["name"] for m in client.list_models()} >= {"pinrank", "preprocess", "ranker", "postprocess"}


# --- weights-only checkpoints --------------------------------------------------------------


def test_checkpoints_round_trip_numpy_fields_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    ids = np.arange(5, dtype=np.int64)
    rng_state = np.random.default_rng(1).bit_generator.state
    path = save_checkpoint(tmp_path / "c.pt", kind="ranker", config={"ranker": {"dims": (3, 2)}, "n": np.int64(5)},
                           model=model, extra={"item_ids": ids, "rng_state": rng_state, "loss": np.float32(0.5)})
    raw = torch.load(path, weights_only=True)  # plain torch, no allowlist: nothing but weights-only types
    assert isinstance(raw["extra"]["item_ids"], dict)
    ckpt = load_checkpoint(path, "ranker")
    np.testing.assert_array_equal(ckpt["extra"]["item_ids"], ids)
    assert ckpt["extra"]["rng_state"] == rng_state and ckpt["config"]["n"] == 5
    assert ckpt["config"]["ranker"]["dims"] == (3, 2)
    model.load_state_dict(ckpt["state_dict"])


def test_unsafe_fields_fail_at_save_time(tmp_path):
    class Config:
        pass

    with pytest.raises(TypeError, match=r"config.obj holds a Config"):
        save_checkpoint(tmp_path / "c.pt", kind="ranker", config={"obj": Config()}, model=torch.nn.Linear(1, 1))
    with pytest.raises(TypeError, match="numpy dtype object"):
        save_checkpoint(tmp_path / "c.pt", kind="ranker", config={}, model=torch.nn.Linear(1, 1),
                        extra={"names": np.array(["a", None], dtype=object)})
    assert not (tmp_path / "c.pt").exists()


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"kind": "ranker", "payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refused: not a weights-only checkpoint"):
        load_checkpoint(tmp_path / "evil.pt", "ranker")
    assert not marker.exists()


def test_checkpoints_written_with_numpy_pickles_still_load(tmp_path):
    # Checkpoints from before numpy arrays were stored as tensors: numpy's
    # array reconstruction is allowlisted, nothing else.
    torch.save({"kind": "ranker", "config": {}, "state_dict": {}, "extra": {"item_ids": np.arange(3)}},
               tmp_path / "old.pt")
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "old.pt", "ranker")["extra"]["item_ids"], np.arange(3))


# --- manifest checksums ---------------------------------------------------------------------


def make_version(root: Path, files: dict[str, bytes], sums: dict[str, str] | None = None) -> Path:
    version = root / "ranker" / "1"
    version.mkdir(parents=True)
    for name, data in files.items():
        (version / name).write_bytes(data)
    sums = sums if sums is not None else {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    (version / "manifest.json").write_text(json.dumps({"artifact_sha256": sums, "ranker_files": sorted(sums)}))
    return version


def test_manifest_checksums_are_verified(tmp_path):
    version = make_version(tmp_path, {"ranker.pt": b"weights", "ranker.onnx": b"graph"})
    assert sorted(verify_version(version)) == ["ranker.onnx", "ranker.pt"]
    assert verify_repository(tmp_path) == {"ranker/1": ["ranker.onnx", "ranker.pt"]}
    (version / "ranker.onnx").write_bytes(b"grapH")
    with pytest.raises(IntegrityError, match=r"ranker.onnx: sha256 .* does not match manifest.json"):
        verify_repository(tmp_path)
    (version / "ranker.onnx").unlink()
    with pytest.raises(IntegrityError, match="ranker.onnx listed in manifest.json but missing"):
        verify_version(version)


def test_manifest_names_must_be_plain_files(tmp_path):
    version = make_version(tmp_path, {}, sums={"../../etc/passwd": "00"})
    with pytest.raises(IntegrityError, match="not a plain file name"):
        verify_version(version)


def test_versions_without_checksums_verify_nothing(tmp_path):
    (tmp_path / "pinrank" / "1").mkdir(parents=True)
    version = make_version(tmp_path, {"ranker.pt": b"w"}, sums={})
    assert verify_version(version) == [] and verify_repository(tmp_path) == {}
    assert os.listdir(tmp_path / "pinrank" / "1") == []
