# e4e-lab. Two commands for a newcomer (see README):
#   make demo   # venv + install + synth ablation grid (demo profile) + evaluation + runs/reports/
#   make test   # venv + install + the test suite
# `make help` lists every target.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
GRID   ?= experiments/grids/paper_ablation.yaml
DOMAIN ?= synth
PROFILE ?= demo
PYTEST_ARGS ?=
# the demo's tables/figures/notebooks go here (untracked); `make report` refreshes the tracked reports/
DEMO_REPORTS ?= runs/reports
# torch/torchvision: pyproject.toml asks for a range (torch>=2.5,<3) so that `pip install -e .` keeps a
# build already installed; `make install` first installs the exact versions the project is tested with
# (CI's), then the package. TORCH_INDEX=<wheel index URL> takes them from another index (e.g. PyTorch's
# CPU-only or CUDA-specific wheel index); TORCH='torch==X torchvision==Y' picks other in-range versions.
TORCH ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
# the optional dependency groups installed with the package (pyproject.toml: faces, slurm, notebooks, dev, all)
EXTRAS ?= all

.PHONY: help install demo test test-fast report realism-gap convergence ablation-study ablation-effects ui weights synth-data bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url '$(TORCH_INDEX)') $(TORCH)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv: the tested torch, then the package with every extra (pip install -e '.[all]')

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-12s %s\n", $$1, $$2}'

demo: install  ## train + evaluate the synth ablation grid (demo profile, < 25 min on 2 cores), tables/figures in runs/reports/
	$(BIN)/python -m experiments.grid run $(GRID) --domain $(DOMAIN) --profile $(PROFILE)
	$(BIN)/python -m experiments.report --experiment $(DOMAIN) --grid paper_ablation --out $(DEMO_REPORTS)

# distortion and editability vs the synth realism gap (9 members; longer than the demo)
realism-gap: install  ## W encoder, e4e and pSp at three realism gaps (synth; ~50 min on 2 cores) + its figure
	$(BIN)/python -m experiments.grid run experiments/grids/realism_gap.yaml
	$(BIN)/python -m experiments.report --experiment synth --grid realism_gap --notebooks 06_realism_gap.ipynb --out reports

# the demo's W encoder, e4e and pSp at 1200 / 2400 / 4800 steps (how far the demo is from converged)
convergence: install  ## the demo's three main members trained 1200, 2400 and 4800 steps (synth; ~60 min on 2 cores) + its figure
	$(BIN)/python -m experiments.grid run experiments/grids/convergence.yaml
	$(BIN)/python -m experiments.report --experiment synth --grid convergence --notebooks 07_convergence.ipynb --out reports

# the factorial ablation study, one training seed per call (resumable: the same call again picks up where a
# killed one stopped), exported into reports/data/ablation_study/seed$(SEED)/ for committing
SEED ?= 0
ablation-study: install  ## one seed of the 2^3 e4e ablations + pSp + W encoder at 4800 steps (synth; hours on 2 cores) + export
	$(BIN)/python -m experiments.grid run experiments/grids/ablation_study.yaml --set seed=$(SEED) \
	  --tracking-uri sqlite:///mlruns/ablation_seed$(SEED).db --runs-dir runs/ablation_seed$(SEED)
	$(BIN)/python -m experiments.ablation export --seed $(SEED) --store sqlite:///mlruns/ablation_seed$(SEED).db

ablation-effects: install  ## effects tables + figure from the committed per-seed results (no MLflow store needed)
	$(BIN)/python -m experiments.ablation effects --out reports

test: install  ## the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install  ## the tests not marked slow
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

report: install  ## refresh the tracked reports/ (tables, figures, executed notebooks) from MLflow
	$(BIN)/python -m experiments.report --experiment $(DOMAIN) --grid paper_ablation --out reports

ui: install  ## MLflow UI on http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

weights: install  ## where each pretrained file goes, and which are present
	$(BIN)/python -m experiments.weights

synth-data: install  ## render the synth data set into data/synth
	$(BIN)/python -m experiments.synth build --out data/synth

bench: install  ## network throughput benchmark (bench/RESULTS.md has the others)
	$(BIN)/python bench/bench_models.py
