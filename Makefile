# Two commands for a newcomer: `make demo` (set up, then run the whole job on sample data)
# and `make test` (set up, then run the test suite). Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CUSTOMERS ?= 20000

.PHONY: setup demo test lint lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

demo: setup
	$(BIN)/churnlens sample-data --customers $(CUSTOMERS) --seed 0
	$(BIN)/churnlens features
	$(BIN)/churnlens train
	$(BIN)/churnlens report
	$(BIN)/churnlens features --as-of 2026-10-31
	@echo "done: reports in work/reports/, MLflow UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db"

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

# Re-resolve pinned versions after changing dependencies in pyproject.toml.
lock:
	uv pip compile pyproject.toml --extra dev --extra spark -p 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) data work mlruns mlflow.db models/*.tmp
