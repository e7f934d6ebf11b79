import pytest
from tritonclient.grpc import model_config_pb2 as mc

from pinrank.backend import schema
from pinrank.export.configs import (
    PROFILES,
    ProfileSettings,
    config_variants,
    profile_configs,
    ranker_config,
)
from pinrank.repository.pbtxt import parse_pbtxt, to_pbtxt


@pytest.mark.parametrize("profile", PROFILES)
def test_configs_round_trip_and_follow_the_schema(profile):
    cfgs = profile_configs(profile)
    assert set(cfgs) == {schema.ENSEMBLE_MODEL, schema.PREPROCESS_MODEL, schema.RANKER_MODEL, schema.POSTPROCESS_MODEL}
    for cfg in cfgs.values():
        assert parse_pbtxt(to_pbtxt(cfg)) == cfg
    ens = cfgs[schema.ENSEMBLE_MODEL]
    assert [i.name for i in ens.input] == [s.name for s in schema.REQUEST_INPUTS]
    assert [o.name for o in ens.output] == [s.name for s in schema.RESPONSE_OUTPUTS]
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [
        schema.PREPROCESS_MODEL, schema.RANKER_MODEL, schema.POSTPROCESS_MODEL]
    ranker = cfgs[schema.RANKER_MODEL]
    kind = mc.ModelInstanceGroup.KIND_CPU if profile == "cpu" else mc.ModelInstanceGroup.KIND_GPU
    assert ranker.instance_group[0].kind == kind
    for name in (schema.PREPROCESS_MODEL, schema.POSTPROCESS_MODEL):
        assert cfgs[name].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_every_ensemble_tensor_is_produced_before_it_is_consumed():
    ens = profile_configs("cpu")[schema.ENSEMBLE_MODEL]
    available = {i.name for i in ens.input}
    for step in ens.ensemble_scheduling.step:
        needed = {v for k, v in step.input_map.items()}
        optional = {s.name for s in schema.REQUEST_INPUTS if s.optional}
        assert needed - available <= optional
        available |= set(step.output_map.values())
    assert {o.name for o in ens.output} <= available


def test_top_k_is_optional_and_dtypes_match():
    ens = profile_configs("cpu")[schema.ENSEMBLE_MODEL]
    top_k = next(i for i in ens.input if i.name == "top_k")
    assert top_k.optional
    assert all(i.data_type == mc.TYPE_INT64 for i in ens.input)


def test_unknown_profile_is_rejected():
    with pytest.raises(ValueError, match="unknown profile"):
        profile_configs("tpu")


@pytest.mark.parametrize("profile", PROFILES)
def test_ranker_warmup_is_a_valid_zero_request_of_the_contract(profile: str):
    cfg = ranker_config(profile, ProfileSettings(warmup_candidates=7, warmup_count=3))
    (warm,) = cfg.model_warmup
    assert warm.count == 3 and warm.batch_size == 1
    assert set(warm.inputs) == {s.name for s in schema.RANKER_INPUTS}
    for s in schema.RANKER_INPUTS:
        w = warm.inputs[s.name]
        assert list(w.dims) == [7 if d == -1 else d for d in s.shape]
        assert w.zero_data and w.data_type == mc.DataType.Value("TYPE_" + s.triton_dtype)
    assert parse_pbtxt(to_pbtxt(cfg)) == cfg


def test_ranker_warmup_can_be_disabled_and_is_range_checked():
    assert not ranker_config("cpu", ProfileSettings(warmup_count=0)).model_warmup
    with pytest.raises(ValueError, match="warmup_candidates"):
        ranker_config("cpu", ProfileSettings(warmup_candidates=schema.MAX_CANDIDATES + 1))


def test_single_pipeline_is_one_python_model_with_the_public_contract():
    cfgs = profile_configs("cpu", ProfileSettings(pipeline="single", ranker_instances=3, cpu_runtime="torchscript"))
    assert list(cfgs) == [schema.ENSEMBLE_MODEL]
    cfg = parse_pbtxt(to_pbtxt(cfgs[schema.ENSEMBLE_MODEL]))
    assert cfg.backend == "python" and cfg.platform == "" and not cfg.ensemble_scheduling.step
    assert [i.name for i in cfg.input] == [s.name for s in schema.REQUEST_INPUTS]
    assert [o.name for o in cfg.output] == [s.name for s in schema.RESPONSE_OUTPUTS]
    assert cfg.instance_group[0].count == 3 and cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert cfg.parameters["RUNTIME"].string_value == "torchscript"
    assert cfg.parameters["WARMUP_CANDIDATES"].string_value == "500"


def test_single_pipeline_is_cpu_only_and_names_are_checked():
    with pytest.raises(ValueError, match="cpu profile"):
        profile_configs("gpu", ProfileSettings(pipeline="single"))
    with pytest.raises(ValueError, match="unknown pipeline"):
        ProfileSettings(pipeline="fused")


def test_cpu_ranker_names_its_runtime():
    for runtime in ("onnxruntime", "torchscript"):
        cfg = ranker_config("cpu", ProfileSettings(cpu_runtime=runtime))
        assert cfg.parameters["RUNTIME"].string_value == runtime


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_gpu_python_ranker_runs_torchscript_on_the_gpu_with_a_cpu_variant(cuda_graphs):
    settings = ProfileSettings(gpu_backend="python", cuda_graphs=cuda_graphs)
    cfg = ranker_config("gpu", settings)
    assert cfg.backend == "python" and not cfg.platform
    assert cfg.parameters["RUNTIME"].string_value == "torchscript"
    assert cfg.parameters["CUDA_GRAPHS"].string_value == str(cuda_graphs).lower()
    assert cfg.parameters["ALLOW_TF32"].string_value == "false"
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
    variants = config_variants("gpu", settings)
    assert list(variants) == ["cpu"] and list(variants["cpu"]) == [schema.RANKER_MODEL]
    on_cpu = variants["cpu"][schema.RANKER_MODEL]
    assert [(g.kind, g.count) for g in on_cpu.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    assert on_cpu.parameters["CUDA_GRAPHS"].string_value == "false"  # graphs need CUDA
    # Apart from placement, the variant is the same model: same contract, runtime and warmup.
    del on_cpu.instance_group[:], cfg.instance_group[:]
    del on_cpu.parameters["CUDA_GRAPHS"], cfg.parameters["CUDA_GRAPHS"]
    assert on_cpu == cfg


def test_only_the_python_gpu_backend_has_variants_or_cuda_graphs():
    assert config_variants("cpu") == {} and config_variants("gpu") == {}
    with pytest.raises(ValueError, match="cuda_graphs"):
        ProfileSettings(gpu_backend="libtorch", cuda_graphs=True)
