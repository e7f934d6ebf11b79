"""The launcher's error paths (real binary, no models needed for most)."""

import socket

import pytest

from pinrank.serving.tritonserver import (
    Ports,
    ServerError,
    TritonServer,
    backend_directory,
    free_ports,
    gpu_present,
    tritonserver_binary,
    validate_repository,
)


def test_bundled_binary_and_backend_dir_exist():
    assert tritonserver_binary().exists()
    py = backend_directory() / "python"
    assert (py / "libtriton_python.so").exists()
    assert (py / "triton_python_backend_stub").exists()


def test_missing_repository(tmp_path):
    with pytest.raises(ServerError, match="does not exist"):
        validate_repository(tmp_path / "nope")


def test_empty_repository(tmp_path):
    with pytest.raises(ServerError, match="holds no models"):
        validate_repository(tmp_path)


def test_model_without_config(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(ServerError, match="config.pbtxt is missing"):
        validate_repository(tmp_path)


def test_malformed_config(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nbackend: python\nmax_batch_size: oops\n')
    with pytest.raises(ServerError, match="not a valid Triton ModelConfig"):
        validate_repository(tmp_path)


@pytest.mark.skipif(gpu_present(), reason="checks the machine-without-a-GPU message")
def test_a_gpu_model_without_a_gpu_names_the_cpu_variant(tmp_path):
    (tmp_path / "m" / "configs").mkdir(parents=True)
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\ninstance_group { kind: KIND_GPU }\n')
    with pytest.raises(ServerError, match="m run on KIND_GPU and this machine has no NVIDIA GPU; serve a cpu-profile"):
        validate_repository(tmp_path)
    (tmp_path / "m" / "configs" / "cpu.pbtxt").write_text('name: "m"\nbackend: "python"\n'
                                                          'instance_group { kind: KIND_CPU }\n')
    with pytest.raises(ServerError, match="--model-config-name cpu"):
        validate_repository(tmp_path)
    assert validate_repository(tmp_path, "cpu") == ["m"]
    with pytest.raises(ServerError, match="plain file stem"):
        TritonServer(tmp_path, model_config_name="../cpu")


def test_occupied_port_is_reported_before_starting(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')
    http, grpc, metrics = free_ports(3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", grpc))
        s.listen()
        server = TritonServer(tmp_path, Ports(http, grpc, metrics))
        with pytest.raises(ServerError, match=f"grpc port {grpc} already in use"):
            server.start()
        assert server.process is None


@pytest.mark.triton
def test_server_that_fails_to_load_reports_its_log(tmp_path):
    # A syntactically valid config whose model can't load: the server exits
    # (--exit-on-error) and the error names the cause instead of hanging.
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "broken" / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [1] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]\n'
    )
    server = TritonServer(tmp_path, Ports(*free_ports(3)), log_path=tmp_path / "log.txt")
    with pytest.raises(ServerError) as err:
        server.start(timeout_s=60)
    # The model's own error, not just its name: what a user needs to fix it.
    assert "broken" in str(err.value) and "boom at import" in str(err.value), str(err.value)
    assert not server.is_running()


def test_a_failure_report_leads_with_real_errors_not_cpu_host_noise(tmp_path):
    log = tmp_path / "tritonserver.log"
    log.write_text(
        'W1203 16:34:00.056660 1 pinned_memory_manager.cc:273] "Unable to allocate pinned system memory: '
        'CUDA driver version is insufficient for CUDA runtime version"\n'
        'E1203 16:34:00.056807 1 server.cc:241] "CudaDriverHelper has not been initialized."\n'
        'E1203 16:34:00.862721 1 ensemble_scheduler.cc:1468] "unable to create stream for pinrank: CUDA driver '
        'version is insufficient for CUDA runtime version"\n'
        'E1203 16:34:01.000000 1 model_lifecycle.cc:654] "failed to load \'ranker\': bad model.py"\n'
        + "".join(f"I1203 16:34:02.0000{i} 1 server.cc:1] \"line {i}\"\n" for i in range(12)))
    report = TritonServer(tmp_path, Ports(1, 2, 3), admin_key="k" * 32, log_path=log).log_tail(lines=4)
    first = report.splitlines()[0]
    assert "failed to load 'ranker'" in first, report
    assert "CudaDriverHelper" not in report and "insufficient" not in report
    assert report.splitlines()[-1].endswith('"line 11"')
