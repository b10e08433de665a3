# Two commands for a fresh clone: `make run` (the whole pipeline) and `make test` (the suite).
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(BIN):$(PATH)

.PHONY: setup plots-page run test test-fast clean-mlflow prune-mlflow mlflow-server mlflow-server-stop pretrained help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-19s %s\n", $$1, $$2}'

$(STAMP): requirements.txt
	@python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "error: fer-pipeline needs Python >= 3.11; python3 is $$(python3 -V 2>&1 | cut -d' ' -f2)" >&2; exit 1; }
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

setup: $(STAMP) plots-page  ## create .venv with the pinned dependencies; make this a git + DVC repo
	@git rev-parse --is-inside-work-tree >/dev/null 2>&1 || git init -q
	@test -d .dvc || dvc init -q

# The page `dvc plots show` and `dvc plots diff` fill, with Vega, Vega-Lite and Vega-Embed inline
# (pinned in plots/package-lock.json, installed from npm into the ignored plots/node_modules), so
# its charts draw offline. Without npm, DVC's own page is used: it loads Vega from a CDN.
PLOTS_PAGE := plots/offline.html

$(PLOTS_PAGE): plots/package-lock.json plots/template.html plots/build_page.py | $(STAMP)
	npm ci --prefix plots --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error
	python -m plots.build_page --out $@
	dvc config --local plots.html_template ../$@

plots-page: $(STAMP)  ## install the pinned Vega scripts (npm) so `dvc plots show` draws charts offline
	@command -v npm >/dev/null 2>&1 && $(MAKE) --no-print-directory $(PLOTS_PAGE) || { \
	  echo "note: no offline plots page (needs npm and, once, its registry): \`dvc plots show\` charts load Vega from a CDN; PNG plots work offline (docs/plots.md)"; \
	  test -f $(PLOTS_PAGE) || dvc config --local --unset plots.html_template 2>/dev/null || true; }

run: setup  ## run the pipeline (dvc repro) on the data selected in params.yaml
	dvc repro

# Two pytest workers (a test file stays on one), each with one compute thread: PyTorch thread
# pools sized for the whole machine would otherwise wait on each other.
test: setup  ## lint, then run the test suite (what CI runs)
	ruff check
	OMP_NUM_THREADS=1 python -m pytest -n 2 --dist loadfile

test-fast: setup  ## lint and the library tests, without the slow end-to-end runs: the inner loop
	ruff check
	OMP_NUM_THREADS=1 python -m pytest -n 2 --dist loadfile -m "not slow"

clean-mlflow:  ## delete the local MLflow store (runs, artifacts, registered models)
	rm -rf mlflow.db mlflow.db-wal mlflow.db-shm mlartifacts

prune-mlflow: $(STAMP)  ## delete registered versions without an alias and superseded runs, then mlflow gc
	scripts/prune-mlflow

# A shared tracking server (docs/team.md). Settings: MLFLOW_PORT, MLFLOW_SERVER_DIR, MLFLOW_BACKEND
# (auto|postgres|sqlite), PG_PORT; see scripts/mlflow-server.
mlflow-server: $(STAMP)  ## start an MLflow tracking server on 127.0.0.1 (PostgreSQL or SQLite, proxied artifacts)
	scripts/mlflow-server start

mlflow-server-stop:  ## stop the server (and PostgreSQL) that mlflow-server started
	scripts/mlflow-server stop

pretrained: $(STAMP)  ## retrain the shipped FER2013 model fer/weights/cnn4_fer2013.pt: make pretrained FER2013=/path/to/fer2013.csv.gz
	@test -n "$(FER2013)" || { echo "usage: make pretrained FER2013=/path/to/fer2013.csv.gz" >&2; exit 1; }
	scripts/train-pretrained "$(FER2013)"
