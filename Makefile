# Two commands for a fresh clone: `make run` (the whole pipeline) and `make test` (the suite).
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(BIN):$(PATH)

.PHONY: setup run test clean-mlflow help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the pinned dependencies; make this a git + DVC repo
	@git rev-parse --is-inside-work-tree >/dev/null 2>&1 || git init -q
	@test -d .dvc || dvc init -q

run: setup  ## run the pipeline (dvc repro) on the data selected in params.yaml
	dvc repro

test: setup  ## run the test suite (what CI runs)
	python -m pytest

clean-mlflow:  ## delete the local MLflow store (runs, artifacts, registered models)
	rm -rf mlflow.db mlartifacts
