# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RAW := data/raw
export DVC_NO_ANALYTICS := 1
# dvc.yaml commands say `python`: the virtual environment's.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run demo test test-fast lint typecheck push pull benchmark report plots predict metrics

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install whenever the pinned dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# `dvc plots show/diff` draw their page from this template (.dvc/config: plots.html_template, resolved
# against .dvc/): Vega, Vega-Lite and Vega-Embed inline from vl-convert instead of DVC's CDN scripts, so
# the page also draws on an air-gapped network. Git-ignored; rewritten when the venv or the code changes.
PLOTS_TEMPLATE := .dvc/plots-offline.html
$(PLOTS_TEMPLATE): $(VENV)/.installed src/metastases/compare/render.py src/metastases/compare/plots.py
	$(BIN)/python -m metastases.compare.plots --dvc-template $@

install: $(VENV)/.installed $(PLOTS_TEMPLATE)

# Build the embedded demo cohort only when data/raw is missing or empty; a user's own export is left alone.
# Beside a demo data/raw, an empty data/external gets the demo's second site (params.yaml demo_external), so
# the default run shows an external validation; with a user's own data/raw it stays as the user left it
# (empty: the external stages say so in one line). `dvc add` makes both visible to DVC (and to queued
# experiments) as a user's export would be.
EXTERNAL := data/external
demo: install
	@if [ -z "$$(ls -A $(RAW) 2>/dev/null)" ]; then \
		echo "data/raw is empty: building the demo cohort (params.yaml demo_cohort)"; \
		$(BIN)/python -m metastases.demo_cohort $(RAW) --from-params params.yaml; \
	fi
	@if [ -z "$$(ls -A $(EXTERNAL) 2>/dev/null)" ] && [ -f $(RAW)/DEMO_COHORT.txt ]; then \
		echo "data/external is empty: building the demo's second site (params.yaml demo_external)"; \
		$(BIN)/python -m metastases.demo_cohort $(EXTERNAL) --from-params params.yaml --section demo_external; \
	fi
	@mkdir -p $(EXTERNAL)
	$(BIN)/dvc add --quiet $(RAW) $(EXTERNAL)

run: demo
	$(BIN)/dvc repro
	@echo
	@$(BIN)/python -m metastases.compare.summary --metrics-dir metrics
	@echo
	@echo "Metrics: metrics/*.json (dvc metrics show), every number in metrics/details/ (make metrics: the table above)"
	@echo "Plots:   plots/*.png, plots/**/*.csv  (dvc plots show: plots in a browser, offline; make plots: PNGs)"

# Both models' numbers in one table (120 columns): out-of-fold and held-out AUC, sensitivity/specificity at
# the out-of-fold threshold, localisation, fold models learned. `dvc metrics show` has the headline keys.
metrics: install
	@$(BIN)/python -m metastases.compare.summary --metrics-dir metrics

lint: install
	$(BIN)/ruff check src stages tests scripts
	$(BIN)/ruff format --check src stages tests scripts

# mypy, configured in pyproject.toml ([tool.mypy]: src and stages)
typecheck: install
	$(BIN)/mypy

# Test files run in parallel, one process per core (pytest-xdist); a file's tests stay in one process, so
# a module-scoped pipeline is built once. PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= auto
test: lint typecheck
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile

# The inner loop: lint and the tests not marked slow (no end-to-end pipeline, no process-killing tests).
test-fast: lint
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not slow"

# Share data, models and results through the DVC remote (default: core.remote in .dvc/config, REMOTE=<name>
# for another). The remote is checked first: a missing or unreachable one is one line naming it and the fix.
push: install
	$(BIN)/python -m metastases.remote push $(if $(REMOTE),--remote $(REMOTE))

pull: install
	$(BIN)/python -m metastases.remote pull $(if $(REMOTE),--remote $(REMOTE))

# The benchmark and the learning curve: `dvc repro` of benchmark/dvc.yaml (a DVC project of its own) on a
# 240-patient demo cohort; one stage per run, so an interrupted benchmark resumes where it stopped.
# benchmark/benchmark.md, benchmark/metrics/, benchmark/plots/learning_curve.png (hours on 2 cores:
# docs/benchmark.md). STAGES=curve (or curve@3d-42-96, baselines, ...) runs only those and what they need;
# the table alone over the runs made so far: cd benchmark && dvc repro -s table (without -s it runs the rest).
benchmark: install
	cd benchmark && ../$(BIN)/dvc repro $(STAGES)

# Score a new patient's DICOM folder with the trained models: probabilities, decisions at the out-of-fold
# threshold, evidence picture -> $(OUT)/prediction.json, $(OUT)/evidence.png. Nothing identifying is written.
OUT ?= predictions
predict: install
	@test -n "$(STUDY)" || { echo "usage: make predict STUDY=<patient DICOM folder> [OUT=predictions]"; exit 2; }
	$(BIN)/python -m metastases.predict "$(STUDY)" --out "$(OUT)"

# A pull-request report against another revision: report/report.md + PNGs of both revisions.
HEAD ?= workspace
REPO ?= .
report: install
	@test -n "$(BASE)" || { echo "usage: make report BASE=<rev> [HEAD=<rev>|workspace]"; exit 2; }
	$(BIN)/python -m metastases.compare.report --base $(BASE) --head $(HEAD) --repo $(REPO) --out $(REPO)/report

# Offline `dvc plots show` (no REVS) or `dvc plots diff $(REVS)`: dvc_plots/index.html + PNGs, no CDN.
plots: install
	$(BIN)/python -m metastases.compare.plots $(REVS) --out dvc_plots
