# e4e-lab. Two commands for a newcomer (see README):
#   make demo   # venv + install + synth ablation grid (demo profile) + evaluation + reports/
#   make test   # venv + install + the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
GRID   ?= experiments/grids/paper_ablation.yaml
DOMAIN ?= synth
PROFILE ?= demo
PYTEST_ARGS ?=

.PHONY: install demo test test-fast report realism-gap ui weights synth-data bench clean-runs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m experiments.grid run $(GRID) --domain $(DOMAIN) --profile $(PROFILE)
	$(BIN)/python -m experiments.report --experiment $(DOMAIN) --grid paper_ablation --out reports

# distortion and editability vs the synth realism gap (9 members; longer than the demo)
realism-gap: install
	$(BIN)/python -m experiments.grid run experiments/grids/realism_gap.yaml
	$(BIN)/python -m experiments.report --experiment synth --grid realism_gap --notebooks 06_realism_gap.ipynb --out reports

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

report: install
	$(BIN)/python -m experiments.report --experiment $(DOMAIN) --grid paper_ablation --out reports

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

weights: install
	$(BIN)/python -m experiments.weights

synth-data: install
	$(BIN)/python -m experiments.synth build --out data/synth

bench: install
	$(BIN)/python bench/bench_models.py
