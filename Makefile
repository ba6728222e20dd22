# nerbatch: setup, the whole pipeline on CoNLL-2003, and the tests.
#   make demo   # venv + install, then train -> export -> score -> annotate -> score end to end
#   make test   # venv + install (and Airflow in .venv-airflow), then the fast test suite
# Override on the command line, e.g.: make demo DATA=/data/conll2003 EPOCHS=1

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/conll2003
RUN ?= runs/minilm
BUNDLE ?= export/minilm
EPOCHS ?= 8
WORK ?= work
AIRFLOW_VENV ?= .venv-airflow

.PHONY: install install-airflow demo test test-slow lint benchmark clean

install: $(VENV)/.installed

# torch is pinned by constraints.txt (the CPU wheel); the extras bring training, scoring, the Ray
# engine and tests.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -c constraints.txt -e ".[train,ray,dev]"
	touch $@

# Airflow pins many packages: it gets its own virtualenv, used by tests/test_airflow.py to run the
# DAGs of jobs/airflow. The DAGs call the nerbatch command, so nerbatch is not installed there.
# uv installs Airflow's ~130 packages in seconds where pip takes over a minute.
install-airflow: $(AIRFLOW_VENV)/.installed

$(AIRFLOW_VENV)/.installed: jobs/airflow/requirements.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q uv==0.13.9
	$(AIRFLOW_VENV)/bin/uv pip install -q --python $(AIRFLOW_VENV)/bin/python -r jobs/airflow/requirements.txt
	touch $@

$(RUN)/nerbatch.json: | install
	$(BIN)/nerbatch train --train $(DATA)/train.txt --dev $(DATA)/dev.txt --out $(RUN) --epochs $(EPOCHS)

$(BUNDLE)/bundle.json: $(RUN)/nerbatch.json
	$(BIN)/nerbatch export $(RUN) --out $(BUNDLE) --dev $(DATA)/dev.txt --test $(DATA)/test.txt

demo: $(BUNDLE)/bundle.json
	@mkdir -p $(WORK)
	$(BIN)/nerbatch score --model $(RUN) $(DATA)/test.txt --json $(WORK)/score-pytorch.json --markdown $(WORK)/score-pytorch.md
	$(BIN)/nerbatch score --model $(BUNDLE) $(DATA)/test.txt --json $(WORK)/score-int8.json
	$(BIN)/nerbatch gold2corpus $(DATA)/test.txt $(WORK)/test-docs.jsonl --unit document
	$(BIN)/nerbatch annotate $(WORK)/test-docs.jsonl $(WORK)/test-docs.parquet --model $(BUNDLE) --overwrite
	$(BIN)/nerbatch score --predictions $(WORK)/test-docs.parquet $(DATA)/test.txt --json $(WORK)/score-end-to-end.json --markdown $(WORK)/score-end-to-end.md
	@echo "bundle: $(BUNDLE)   try: $(BIN)/nerbatch annotate in/ out.parquet"

# Exit code 5 means pytest collected no tests: not a failure here.
test: install install-airflow
	$(BIN)/pytest -q -m "not slow" || [ $$? -eq 5 ]

test-slow: install install-airflow
	$(BIN)/pytest -q -m slow || [ $$? -eq 5 ]

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(WORK) .pytest_cache
