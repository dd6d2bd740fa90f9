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
# the optional dependency groups installed with the package (pyproject.toml: faces, slurm, server, notebooks, dev, all)
EXTRAS ?= all

.PHONY: help install demo test test-fast report realism-gap convergence ablation-study ablation-effects ui weights synth-data bench \
        postgres server server-stop server-status screenshot

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

test: install postgres  ## the whole test suite (what CI runs; installs PostgreSQL for the tracking-server test when root)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install  ## the tests not marked slow
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

report: install  ## refresh the tracked reports/ (tables, figures, executed notebooks) from MLflow
	$(BIN)/python -m experiments.report --experiment $(DOMAIN) --grid paper_ablation --out reports

# `make ui` reads the store MLFLOW_TRACKING_URI names (else the project's sqlite store); a tracking server
# (an http(s) URI, e.g. `make server`) serves its own UI at that address, so nothing is started for it
UI_URI = $(or $(MLFLOW_TRACKING_URI),sqlite:///mlruns/mlflow.db)
UI_PORT ?= 5000
ui: install  ## MLflow UI on http://127.0.0.1:5000 for $MLFLOW_TRACKING_URI (default sqlite:///mlruns/mlflow.db); a server's UI is its URL
	@case '$(UI_URI)' in \
	  http://*|https://*) echo "MLFLOW_TRACKING_URI is the tracking server $(UI_URI): its UI is already there, open $(UI_URI) (nothing to start)";; \
	  *) echo "MLflow UI on http://127.0.0.1:$(UI_PORT) for $(UI_URI)"; \
	     $(BIN)/mlflow ui --backend-store-uri '$(UI_URI)' --host 127.0.0.1 --port $(UI_PORT);; \
	esac

# the tracking server (docs/tracking.md): PostgreSQL + `mlflow server` with its artifacts, all in $(SERVER_DIR)/
# (gitignored); run as root, PostgreSQL runs as the unprivileged `postgres` user (experiments/server.py)
SERVER_DIR ?= server
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000
postgres:  ## PostgreSQL's server binaries (make server, tests/test_server.py): apt-get install postgresql when missing and root
	@if [ -n "$$E4E_PG_BIN" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "PostgreSQL is not installed: apt-get install postgresql"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql; \
	else echo "warning: PostgreSQL's server binaries are missing (tests/test_server.py fails, make server stops): sudo apt-get install postgresql, or set E4E_PG_BIN" >&2; fi

server: install postgres  ## start the MLflow tracking server (PostgreSQL store, served artifacts) in server/ on http://127.0.0.1:5000
	$(BIN)/python -m experiments.server start --dir $(SERVER_DIR) --host $(SERVER_HOST) --port $(SERVER_PORT)
	@echo "clients: export MLFLOW_TRACKING_URI=$$($(BIN)/python -m experiments.server url --dir $(SERVER_DIR)); stop: make server-stop"

server-stop: install  ## stop the tracking server, then its PostgreSQL
	$(BIN)/python -m experiments.server stop --dir $(SERVER_DIR)

server-status: install  ## what of the tracking server runs, and its URL
	$(BIN)/python -m experiments.server status --dir $(SERVER_DIR)

# docs/mlflow_runs_table.png: Playwright (npm playwright-core, docs/screenshot/package.json) drives Debian's
# chromium through the UI's column picker; SHOT_URI=<tracking URI> shows that store instead of a tiny grid's
SHOT_URI ?=
screenshot: install  ## docs/mlflow_runs_table.png: a tiny grid's runs table in the MLflow UI (Playwright + chromium)
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
	  || { echo "error: /usr/bin/chromium is missing: sudo apt-get install chromium" >&2; exit 1; }
	cd docs/screenshot && npm ci --no-audit --no-fund --silent
	$(BIN)/python docs/screenshot/run.py $(if $(SHOT_URI),--tracking-uri '$(SHOT_URI)')

weights: install  ## where each pretrained file goes, and which are present
	$(BIN)/python -m experiments.weights

synth-data: install  ## render the synth data set into data/synth
	$(BIN)/python -m experiments.synth build --out data/synth

bench: install  ## network throughput benchmark (bench/RESULTS.md has the others)
	$(BIN)/python bench/bench_models.py
