# Two commands do all set-up on a fresh machine: `make report` and `make test`.
# Both bootstrap .venv when it is missing or when the requirement files changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cen_lab-installed
REPORT_ARGS ?=
PYTEST_ARGS ?=

.PHONY: report test venv data lab explore bench clean-venv

$(STAMP): pyproject.toml requirements.txt requirements-dev.txt requirements-lab.txt requirements-cluster.txt \
          requirements-tensorboard.txt requirements-lightning.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

## Execute the report notebooks headlessly (training or reusing their runs) into reports/<preset>/.
report: $(STAMP)
	$(VENV)/bin/cen-lab report $(REPORT_ARGS)

## Run the test suite (the command CI runs).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## Open JupyterLab on notebooks/ in the project environment.
## Jupyter refuses to run as root without --allow-root, so it is added for root only.
lab: $(STAMP)
	cd notebooks && ../$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

## Serve the explorer of the runs under RUNS (default: runs/) as a web app with Voila, on 127.0.0.1 only.
RUNS ?= runs
explore: $(STAMP)
	$(VENV)/bin/cen-lab explore $(RUNS) $(EXPLORE_ARGS)

## Benchmarks: ratios measured side by side in one run, written to benchmarks/results.json.
bench: $(STAMP)
	$(PY) -m benchmarks

## Regenerate the canonical datasets in data/ (bit-identical to the committed ones).
data: $(STAMP)
	$(VENV)/bin/cen-lab data regenerate

clean-venv:
	rm -rf $(VENV)
