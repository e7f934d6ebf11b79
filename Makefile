# pinrank: `make demo` and `make test` work on a fresh clone (CPU, bundled Triton).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PINRANK := $(VENV)/bin/pinrank
A := artifacts
DATA := $(A)/data/quick
PF_CKPT := $(A)/checkpoints/pinnerformer.pt
RANKER_CKPT := $(A)/checkpoints/ranker.pt
SNAPSHOT := $(A)/snapshots/latest
REPO := model_repository
ML_SRC ?= ../shared/data/ml-latest-small
ML_DATA := $(A)/data/ml
PYTEST_ARGS ?=
LOADTEST_ARGS ?=
BENCH_ARGS ?=
RELIABILITY_ARGS ?=

.PHONY: help setup data train train-pinnerformer train-ranker embed export serve demo eval-pinnerformer eval-pinnerformer-ml eval-ranker eval-ranker-ml eval-ranker-real eval-real eval-item-features eval-loo-ml100k loadtest bench perf-analyzer docs-figures gpu-bundle gpu-check-cpu daily-loop daily-sizing reliability lint test test-fast clean
.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## Create .venv and install pinrank + pinrank-client (+ test deps)

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e ./client -e '.[test]'
	touch $@

data: $(DATA)/meta.json ## Generate the quick synthetic action log
$(DATA)/meta.json: | setup
	$(PINRANK) data synth --out $(DATA)

train-pinnerformer: $(PF_CKPT) ## Train PinnerFormer (quick config) on the first half of the training period (the ranker trains on the rest)
$(PF_CKPT): $(DATA)/meta.json
	$(PINRANK) train pinnerformer --data $(DATA) --out $@ --train-cut 0.5 --curve results/pinnerformer_curve.png

embed: $(SNAPSHOT)/meta.json ## Daily batch job: user-embedding snapshot as of the train/eval split
$(SNAPSHOT)/meta.json: $(PF_CKPT)
	$(PINRANK) embed --checkpoint $(PF_CKPT) --data $(DATA) --out $(SNAPSHOT)

train-ranker: $(RANKER_CKPT) ## Train the ranker (needs PinnerFormer for daily snapshots)
$(RANKER_CKPT): $(PF_CKPT)
	$(PINRANK) train ranker --data $(DATA) --pinnerformer $(PF_CKPT) --out $@ --curve results/ranker_curve.png

train: train-pinnerformer train-ranker ## Train both models

export: $(REPO)/cpu/pinrank/config.pbtxt ## Export TorchScript + ONNX (each parity-gated; + TensorRT on a GPU) into model_repository/{cpu,gpu}
$(REPO)/cpu/pinrank/config.pbtxt: $(RANKER_CKPT) $(SNAPSHOT)/meta.json
	$(PINRANK) export --ranker $(RANKER_CKPT) --snapshot $(SNAPSHOT) --data $(DATA) --out $(REPO) --target all

serve: export ## Serve model_repository/cpu on localhost:8000/8001/8002 (Ctrl-C stops)
	$(PINRANK) serve --repository $(REPO)/cpu

demo: export ## Everything: data, train, export, serve, rank via the SDK -> results/demo.json
	$(PINRANK) demo --repository $(REPO)/cpu --data $(DATA) --out results/demo.json

eval-pinnerformer: $(DATA)/meta.json ## PinnerFormer ablations (objective x negatives) -> results/pinnerformer.json
	$(PY) -m pinrank.train.pinnerformer_ablation --data $(DATA) --out results/pinnerformer.json

eval-pinnerformer-ml: $(ML_DATA)/meta.json ## The same on MovieLens (ML_SRC=...; global time split, whole remainder as eval) -> results/pinnerformer_ml.json
	$(PY) -m pinrank.train.pinnerformer_ablation --data $(ML_DATA) --out results/pinnerformer_ml.json \
		--work $(A)/ablation_ml --eval-window-days 1000 --steps 500 \
		--variants dense_all_action-mixed --variants all_action-mixed --variants next_action-mixed \
		--variants dense_all_action-random

eval-ranker: $(PF_CKPT) ## Ranker ablations (early/fused/no-realtime/no-PinnerFormer/none/avg-pool) + cost -> results/ranker.json
	$(PY) -m pinrank.train.ranker_ablation --data $(DATA) --pinnerformer $(PF_CKPT) --out results/ranker.json

ML_PF_CKPT := $(A)/checkpoints/pinnerformer_ml.pt
$(ML_DATA)/meta.json: | setup
	@test -f $(ML_SRC)/ratings.csv || { echo "no MovieLens at $(ML_SRC) (set ML_SRC=path/to/ml-latest-small)"; exit 2; }
	$(PINRANK) data import --format movielens --src $(ML_SRC) --out $(ML_DATA)
$(ML_PF_CKPT): $(ML_DATA)/meta.json
	$(PINRANK) train pinnerformer --data $(ML_DATA) --out $@ --steps 500 --train-cut 0.5 --no-eval

eval-ranker-ml: $(ML_PF_CKPT) ## The ranker ablations on MovieLens (rating + 4 sampled negatives per request; fused-layout variants, 400 steps) -> results/ranker_ml.json
	$(PY) -m pinrank.train.ranker_ablation --data $(ML_DATA) --pinnerformer $(ML_PF_CKPT) --out results/ranker_ml.json \
		--work $(A)/ranker_ablation_ml --steps 400 --variants full_fused --variants no_realtime \
		--variants no_pinnerformer --variants avgpool_realtime

ML100K_SRC ?= ../shared/data/ml-100k
ML100K_DATA := $(A)/data/ml100k
ML100K_PF_CKPT := $(A)/checkpoints/pinnerformer_ml100k.pt
$(ML100K_DATA)/meta.json: | setup
	@test -f $(ML100K_SRC)/u.data || { echo "no ML-100K at $(ML100K_SRC) (set ML100K_SRC=path/to/ml-100k)"; exit 2; }
	$(PINRANK) data import --format movielens --src $(ML100K_SRC) --out $(ML100K_DATA)
$(ML100K_PF_CKPT): $(ML100K_DATA)/meta.json
	$(PINRANK) train pinnerformer --data $(ML100K_DATA) --out $@ --steps 200 --train-cut 0.5 --no-eval --threads 1

eval-ranker-real: $(ML100K_PF_CKPT) ## Ranker ablations on ML-100K (ratings -> save/click/hide; PinnerFormer on the first half of the training period, rankers on the rest; early vs fused, no-realtime, no-PinnerFormer, none; about 10 min) -> results/ranker_real.json
	$(PY) -m pinrank.train.ranker_ablation --data $(ML100K_DATA) --pinnerformer $(ML100K_PF_CKPT) \
		--out results/ranker_real.json --work $(A)/ranker_ablation_real --steps 300 --threads 1 --variants full_fused \
		--variants full_early --variants no_realtime --variants no_pinnerformer --variants none

REAL_ARGS ?=
eval-real: setup ## Both protocols (leave-one-out, temporal window) on ../shared/data ml-100k + ml-latest-small, every objective + baselines -> results/real.{json,md,png} (about 20 min; REAL_ARGS=...)
	$(PY) -m pinrank.eval.real --out results/real.json --threads 1 $(REAL_ARGS)

eval-item-features: setup ## Item features ablation (content + ids, content only, ids only) on both protocols -> results/item_features.{json,md,png} (about 20 min; REAL_ARGS=...)
	$(PY) -m pinrank.eval.real --item-features --minutes 1.5 --out results/item_features.json --threads 1 $(REAL_ARGS)

ML100K_LOO_MINUTES ?= 10
eval-loo-ml100k: setup ## The next_item recipe vs SASRec and popularity on ML-100K leave-one-out, 10 min per model -> results/loo_ml100k.json
	@test -f ../shared/data/ml-100k/u.data || { echo "no ML-100K at ../shared/data/ml-100k"; exit 2; }
	test -f $(A)/data/real/ml-100k/meta.json || $(PINRANK) data import --format movielens --src ../shared/data/ml-100k --out $(A)/data/real/ml-100k
	$(PINRANK) eval loo --data $(A)/data/real/ml-100k --out results/loo_ml100k.json --minutes $(ML100K_LOO_MINUTES) --threads 1

loadtest: export ## Locust sweep (1,2,4,8 users) + 2-min run at the best one on a started server -> results/loadtest.{json,png}, results/loadtest/ (LOADTEST_ARGS=...)
	$(PY) loadtest/run_loadtest.py --repository $(REPO)/cpu --data $(DATA) --out-dir results $(LOADTEST_ARGS)

bench: export ## In-process vs Triton latency, time per step, early vs fused, instance counts, perf_analyzer cross-check -> results/bench.json (BENCH_ARGS=...)
	$(PY) loadtest/bench.py --repository $(REPO)/cpu --ranker $(RANKER_CKPT) --data $(DATA) --out results/bench.json $(BENCH_ARGS)

perf-analyzer: export ## Only the cross-check: Triton's perf_analyzer beside locust on one server, same replayed requests -> results/perf_analyzer.json
	$(PY) loadtest/bench.py --repository $(REPO)/cpu --ranker $(RANKER_CKPT) --data $(DATA) --out results/perf_analyzer.json \
		--skip latency --skip fusion --skip throughput $(BENCH_ARGS)

docs-figures: setup ## Refresh docs/figures/*.json from newer results/ files (+ checkpoint metrics) and rewrite the doc tables generated from them
	$(PY) docs/figures/render.py --from-results results --artifacts $(A)

GPU_EXPORT := build/gpu_export
GPU_BUNDLE ?= build/gpu_bundle.tar.xz
gpu-bundle: $(GPU_BUNDLE) ## Carry bundle for the GPU check (<60 MiB): bundled tritonserver + libs, gpu (python backend) & cpu profiles, client wheels
$(GPU_BUNDLE): $(RANKER_CKPT) $(SNAPSHOT)/meta.json deploy/gpu_bundle.py $(wildcard deploy/gpu/*.py)
	rm -rf $(GPU_EXPORT)   # export publishes a new version each run: start clean
	$(PINRANK) export --ranker $(RANKER_CKPT) --snapshot $(SNAPSHOT) --data $(DATA) --out $(GPU_EXPORT) \
		--target all --gpu-backend python --results $(GPU_EXPORT)/export.json
	$(PY) deploy/gpu_bundle.py --repository $(GPU_EXPORT)/gpu --out $@

gpu-check-cpu: $(GPU_BUNDLE) ## The GPU check's dry run on this CPU, from the bundle alone -> results/gpu-dryrun.json
	PINRANK_GPU_PYTHON=$(PY) PINRANK_GPU_WORK=build/gpu_dryrun bash deploy/gpu_check.sh $(GPU_BUNDLE) --dry-run --out results/gpu-dryrun.json

daily-loop: setup ## The daily loop of deploy/k8s/daily run here from its manifests: bootstrap, rollout under live traffic, forced canary rollback (~2-3 min) -> results/daily_loop.json
	$(PY) -m deploy.daily --out results/daily_loop.json

daily-sizing: $(PF_CKPT) ## Per-user embedding costs measured here + the sizing for 100M users (docs/deploy.md section 9.5) -> results/daily_sizing.json
	$(PY) -m deploy.daily.sizing --data $(DATA) --checkpoint $(PF_CKPT) --out results/daily_sizing.json

reliability: setup ## Bad inputs, model swap/rollback, stub kill, soak, server restart under load -> results/reliability.json (RELIABILITY_ARGS=...)
	$(PY) -m reliability.run --out results/reliability.json $(RELIABILITY_ARGS)

LINT_PATHS := $(wildcard pinrank client/src tests reliability loadtest testkit export deploy docs/figures)
lint: setup ## Ruff over the Python sources (missing folders skipped) + mypy on the client SDK (config in pyproject.toml)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy

test: setup ## Unit + real-Triton integration tests
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: setup ## Unit tests only (no server, no slow training)
	$(VENV)/bin/pytest -m "not slow and not triton" $(PYTEST_ARGS)

clean: ## Remove generated artifacts (keeps .venv)
	rm -rf $(A) results $(REPO)/cpu $(REPO)/gpu $(REPO)/.build
