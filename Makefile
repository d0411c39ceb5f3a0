# Two commands for a newcomer: `make demo` (set up, then run the whole job on sample data)
# and `make test` (set up, then run the test suite). Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CUSTOMERS ?= 20000
AS_OF ?= 2026-10-31
SNAPSHOT := work/snapshots/features-$(AS_OF).parquet
NOTEBOOK := notebooks/01-explore-and-evaluate.ipynb

.PHONY: setup demo test test-fast notebook lint lock clean

# Bytecode is compiled at install (uv does not by default, and where PYTHONDONTWRITEBYTECODE
# is set nothing caches it later): every start would otherwise compile the ~28 MB of source
# a server imports: 4.7-6.2 s of imports against 1.4-1.7 s (benchmarks/results/serving.md).
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m compileall -q -j 0 churnlens features training serving cli
	touch $@

# `train` writes the run's HTML report itself (work/reports/). The last step prints what to
# run next, with a customer id taken from the snapshot the server will load.
demo: setup
	$(BIN)/churnlens sample-data --customers $(CUSTOMERS) --seed 0
	$(BIN)/churnlens features
	$(BIN)/churnlens train
	$(BIN)/churnlens features --as-of $(AS_OF)
	@id=$$($(BIN)/python -c "import pyarrow.parquet as pq; print(pq.read_table('$(SNAPSHOT)', columns=['customer_id']).column(0)[0])") && \
	printf '%s\n' "" "next:" \
	  "  $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db    # runs, plots, models: http://127.0.0.1:5000" \
	  "  $(BIN)/churnlens serve    # scores over HTTP on http://127.0.0.1:3000 (Ctrl+C stops it); then, in another shell:" \
	  "  curl -s -H 'Content-Type: application/json' -d '{\"customers\": [{\"customer_id\": \"$$id\"}]}' http://127.0.0.1:3000/score_customer" \
	  "  $(BIN)/churnlens score --as-of $(AS_OF) --out work/scores/$(AS_OF).parquet    # every active customer, in batch"

# The 25 longest tests are listed at the end (where the suite's time goes, in every CI log).
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

# The inner loop: unit and property tests only; what trains a model, starts a server, runs
# the CLI as a process, starts Spark or opens a real MLflow store is marked slow and left to
# `make test`. One test file per core at a time (module fixtures are built once).
test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist loadfile

# The notebook executed top to bottom, as HTML with its plots (outputs never go into git).
notebook: setup
	$(BIN)/jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=900 \
	    --output-dir work/notebooks $(NOTEBOOK)
	@echo "open work/notebooks/$(basename $(notdir $(NOTEBOOK))).html, or edit it live: $(BIN)/jupyter lab $(NOTEBOOK)"

lint: setup
	$(BIN)/ruff check .

# Re-resolve pinned versions after changing dependencies in pyproject.toml.
# (order-only: an outdated .venv need not be reinstalled from the old lock first)
lock: | $(VENV)/.installed
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra spark -p 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) data work mlruns mlflow.db models/*.tmp
