"""Triton `config.pbtxt` for every model of the ensemble, built as
`model_config_pb2.ModelConfig` messages from the schema's tensor contract
(never string templates), for a target profile:

- `cpu`: every step is a Python-backend model on KIND_CPU; the ranker's
  model.py hosts TorchScript or ONNX Runtime (`cpu_runtime`; the
  pip-installed server has no libtorch/onnxruntime backend).
- `gpu`: the same graph, with the ranker on KIND_GPU, per `gpu_backend`:
  `python` (ranker.pt in the Python backend on the instance's GPU: what the
  bundled server can serve), or a native backend of NVIDIA's Triton container,
  `pytorch_libtorch` (ranker.pt) or `tensorrt_plan` (model.plan); pre/post
  stay on CPU. The `python` backend also gets a config variant `cpu`
  (configs/cpu.pbtxt, KIND_CPU) that `pinrank serve --model-config-name cpu`
  loads on a machine without a GPU.

`pipeline="single"` (cpu profile only) replaces the ensemble with one Python
model of the same name and contract running all three steps in-process.
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from pinrank.backend import schema
from pinrank.repository.layout import (
    ALLOW_TF32_PARAMETER,
    CPU_CONFIG_VARIANT,
    CUDA_GRAPHS_PARAMETER,
    PIPELINES,
    PLAN_FILE,
    RUNTIME_PARAMETER,
    TORCHSCRIPT_FILE,
    WARMUP_CANDIDATES,
    WARMUP_COUNT,
)

PROFILES = ("cpu", "gpu")
#: What hosts the ranker inside the cpu profile's Python backend.
CPU_RUNTIMES = ("torchscript", "onnxruntime")
#: The gpu profile's ranker backend: Triton's Python backend, or a native one.
GPU_BACKENDS = ("python", "libtorch", "tensorrt")
#: File each gpu backend loads from the ranker's version directory.
GPU_MODEL_FILES = {"python": TORCHSCRIPT_FILE, "libtorch": TORCHSCRIPT_FILE, "tensorrt": PLAN_FILE}
#: gpu backend -> Triton (backend, platform).
_GPU_PLATFORMS = {"libtorch": ("pytorch", "pytorch_libtorch"), "tensorrt": ("tensorrt", "tensorrt_plan")}


@dataclass(frozen=True)
class ProfileSettings:
    """Knobs a deployment tunes; defaults fit the 2-core CPU machine."""

    # 2:2:1 (preprocess:ranker:postprocess) serves 398 req/s against 303 for
    # 1:1:1 on the 2-core box (`make bench`, docs/benchmarks.md): a second
    # ranker instance overlaps one request's model time with another's Python
    # steps. Single-request latency is unchanged.
    preprocess_instances: int = 2
    ranker_instances: int = 2
    postprocess_instances: int = 1
    cpu_runtime: str = "onnxruntime"  # the faster on CPU: docs/benchmarks.md
    gpu_backend: str = "libtorch"
    #: gpu_backend="python": one CUDA graph per candidate bucket (torchscript_ranker.GRAPH_BUCKETS).
    cuda_graphs: bool = False
    pipeline: str = "ensemble"
    #: Ranker warmup: candidates per warmup request and how many requests
    #: (0 disables). TorchScript's profiling executor optimises the graph over
    #: its first calls and CUDA/TensorRT allocate lazily, so without warmup the
    #: first real requests after a (re)load pay for it.
    warmup_candidates: int = 500
    warmup_count: int = 2

    def __post_init__(self) -> None:
        if self.cpu_runtime not in CPU_RUNTIMES:
            raise ValueError(f"unknown cpu_runtime {self.cpu_runtime!r}; expected one of {CPU_RUNTIMES}")
        if self.gpu_backend not in GPU_BACKENDS:
            raise ValueError(f"unknown gpu_backend {self.gpu_backend!r}; expected one of {GPU_BACKENDS}")
        if self.cuda_graphs and self.gpu_backend != "python":
            raise ValueError(f"cuda_graphs is for gpu_backend='python', not {self.gpu_backend!r}")
        if self.pipeline not in PIPELINES:
            raise ValueError(f"unknown pipeline {self.pipeline!r}; expected one of {PIPELINES}")
        if self.warmup_count > 0 and not 1 <= self.warmup_candidates <= schema.MAX_CANDIDATES:
            raise ValueError(f"warmup_candidates must be in 1..{schema.MAX_CANDIDATES}, got {self.warmup_candidates}")

    @property
    def single_instances(self) -> int:
        """The single-model layout runs the ranker's instance count: the model
        call is most of a request's time."""
        return self.ranker_instances


def parse_instance_counts(text: str) -> tuple[int, int, int]:
    """'PRE:RANKER:POST' instance counts (each >= 1); ValueError names what is wrong."""
    parts = text.strip().split(":")
    try:
        counts = tuple(int(p) for p in parts)
    except ValueError:
        counts = ()
    if len(counts) != 3 or min(counts) < 1:
        raise ValueError(f"expected PRE:RANKER:POST instance counts, each >= 1 (e.g. 2:2:1), got {text!r}")
    return counts  # type: ignore[return-value]


def _tensor(cls: type, s: schema.TensorSpec, *, optional: bool | None = None):  # type: ignore[no-untyped-def]
    msg = cls(name=s.name, data_type=mc.DataType.Value("TYPE_" + s.triton_dtype), dims=list(s.shape))
    if optional if optional is not None else s.optional:
        msg.optional = True
    return msg


def _instances(kind: str, count: int) -> mc.ModelInstanceGroup:
    return mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.Kind.Value(kind), count=count)


def _python_model(name: str, inputs, outputs, count: int,  # type: ignore[no-untyped-def]
                  parameters: dict[str, str] | None = None, *, optional_inputs: bool = False,
                  kind: str = "KIND_CPU") -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    for key, value in (parameters or {}).items():
        cfg.parameters[key].string_value = value
    cfg.input.extend(_tensor(mc.ModelInput, s, optional=optional_inputs or None) for s in inputs)
    cfg.output.extend(_tensor(mc.ModelOutput, s) for s in outputs)
    cfg.instance_group.append(_instances(kind, count))
    return cfg


def preprocess_config(settings: ProfileSettings) -> mc.ModelConfig:
    return _python_model(
        schema.PREPROCESS_MODEL,
        schema.REQUEST_INPUTS,
        schema.RANKER_INPUTS + schema.PASSTHROUGH,
        settings.preprocess_instances,
        optional_inputs=True,
    )


def postprocess_config(settings: ProfileSettings) -> mc.ModelConfig:
    return _python_model(
        schema.POSTPROCESS_MODEL,
        schema.RANKER_OUTPUTS + schema.PASSTHROUGH,
        schema.RESPONSE_OUTPUTS,
        settings.postprocess_instances,
    )


def ranker_warmup(settings: ProfileSettings) -> list[mc.ModelWarmup]:
    """Zero-filled ranker requests: id 0 is the padding/unknown id, so zeros
    are a valid request (unknown candidates, empty history) for every input,
    unlike random ids, which could index past the embedding tables."""
    if settings.warmup_count <= 0:
        return []
    n = settings.warmup_candidates
    warm = mc.ModelWarmup(name=f"zeros_n{n}", batch_size=1, count=settings.warmup_count)
    for s in schema.RANKER_INPUTS:
        warm.inputs[s.name].CopyFrom(mc.ModelWarmup.Input(
            data_type=mc.DataType.Value("TYPE_" + s.triton_dtype),
            dims=[n if d == -1 else d for d in s.shape], zero_data=True))
    return [warm]


def ranker_config(profile: str, settings: ProfileSettings) -> mc.ModelConfig:
    cfg = _ranker_config(profile, settings)
    cfg.model_warmup.extend(ranker_warmup(settings))
    return cfg


def _ranker_config(profile: str, settings: ProfileSettings) -> mc.ModelConfig:
    if profile == "cpu":
        return _python_model(
            schema.RANKER_MODEL, schema.RANKER_INPUTS, schema.RANKER_OUTPUTS, settings.ranker_instances,
            {RUNTIME_PARAMETER: settings.cpu_runtime},
        )
    if profile != "gpu":
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    if settings.gpu_backend == "python":
        return _python_model(
            schema.RANKER_MODEL, schema.RANKER_INPUTS, schema.RANKER_OUTPUTS, settings.ranker_instances,
            {RUNTIME_PARAMETER: "torchscript", CUDA_GRAPHS_PARAMETER: str(settings.cuda_graphs).lower(),
             ALLOW_TF32_PARAMETER: "false"},
            kind="KIND_GPU",
        )
    # A tensorrt plan's optimisation profile (pinrank/export/tensorrt_engine.py) covers
    # 1..MAX_CANDIDATES candidates at L = REALTIME_SEQ_LEN: the same dims as here.
    backend, platform = _GPU_PLATFORMS[settings.gpu_backend]
    cfg = mc.ModelConfig(name=schema.RANKER_MODEL, backend=backend, platform=platform, max_batch_size=0,
                         default_model_filename=GPU_MODEL_FILES[settings.gpu_backend])
    if settings.gpu_backend == "libtorch":
        # inference_mode skips autograd bookkeeping on every request.
        cfg.parameters["INFERENCE_MODE"].string_value = "true"
    cfg.input.extend(_tensor(mc.ModelInput, s) for s in schema.RANKER_INPUTS)
    cfg.output.extend(_tensor(mc.ModelOutput, s) for s in schema.RANKER_OUTPUTS)
    cfg.instance_group.append(_instances("KIND_GPU", settings.ranker_instances))
    return cfg


def config_variants(profile: str, settings: ProfileSettings | None = None) -> dict[str, dict[str, mc.ModelConfig]]:
    """Named config variants beside config.pbtxt ({variant: {model: config}}),
    for Triton's --model-config-name: the gpu profile's python ranker gets
    `cpu`, the same model on KIND_CPU without CUDA graphs, so one repository
    serves on a machine without a GPU too (models without the variant keep
    their config.pbtxt)."""
    settings = settings or ProfileSettings()
    if profile != "gpu" or settings.gpu_backend != "python":
        return {}
    cfg = ranker_config(profile, settings)
    del cfg.instance_group[:]
    cfg.instance_group.append(_instances("KIND_CPU", settings.ranker_instances))
    cfg.parameters[CUDA_GRAPHS_PARAMETER].string_value = "false"
    return {CPU_CONFIG_VARIANT: {cfg.name: cfg}}


def ensemble_config() -> mc.ModelConfig:
    """preprocess -> ranker -> postprocess; tensor names are the schema's."""
    cfg = mc.ModelConfig(name=schema.ENSEMBLE_MODEL, platform="ensemble", max_batch_size=0)
    # Every request input optional: Triton then passes an incomplete request
    # on, and the validator names the missing input (a required one missing
    # next to optional top_k gets an ensemble "deadlock" error naming nothing).
    cfg.input.extend(_tensor(mc.ModelInput, s, optional=True) for s in schema.REQUEST_INPUTS)
    cfg.output.extend(_tensor(mc.ModelOutput, s) for s in schema.RESPONSE_OUTPUTS)

    def step(model: str, inputs, outputs) -> mc.ModelEnsembling.Step:  # type: ignore[no-untyped-def]
        st = mc.ModelEnsembling.Step(model_name=model, model_version=-1)
        for s in inputs:
            st.input_map[s.name] = s.name
        for s in outputs:
            st.output_map[s.name] = s.name
        return st

    cfg.ensemble_scheduling.step.extend(
        [
            step(schema.PREPROCESS_MODEL, schema.REQUEST_INPUTS, schema.RANKER_INPUTS + schema.PASSTHROUGH),
            step(schema.RANKER_MODEL, schema.RANKER_INPUTS, schema.RANKER_OUTPUTS),
            step(schema.POSTPROCESS_MODEL, schema.RANKER_OUTPUTS + schema.PASSTHROUGH, schema.RESPONSE_OUTPUTS),
        ]
    )
    return cfg


def single_config(settings: ProfileSettings) -> mc.ModelConfig:
    """The whole request path as one Python model under the ensemble's name.
    Warmup runs in initialize() (WARMUP_* parameters): Triton's ModelWarmup
    would need a plausible request, and zeros are not one (timestamps)."""
    return _python_model(
        schema.ENSEMBLE_MODEL, schema.REQUEST_INPUTS, schema.RESPONSE_OUTPUTS, settings.single_instances,
        {RUNTIME_PARAMETER: settings.cpu_runtime, WARMUP_CANDIDATES: str(settings.warmup_candidates),
         WARMUP_COUNT: str(settings.warmup_count)},
        optional_inputs=True,
    )


def profile_configs(profile: str, settings: ProfileSettings | None = None) -> dict[str, mc.ModelConfig]:
    """Every model's config for `profile`, keyed by model name."""
    settings = settings or ProfileSettings()
    if settings.pipeline == "single":
        if profile != "cpu":
            raise ValueError("pipeline='single' is for the cpu profile; the gpu profile keeps the ensemble "
                             "(CPU preprocessing overlapping GPU inference is what it is for)")
        cfg = single_config(settings)
        return {cfg.name: cfg}
    cfgs = [
        preprocess_config(settings),
        ranker_config(profile, settings),
        postprocess_config(settings),
        ensemble_config(),
    ]
    return {c.name: c for c in cfgs}

