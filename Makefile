# Set-up is part of every target: `make run` and `make test` work on a fresh machine.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)
# The CPU build of torch==2.13.0 lies in /opt/wheels on these machines; elsewhere pip uses PyPI.
PIP_FLAGS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PORT    ?= 8501

.PHONY: install run test test-fast lint bench chromium clean

$(STAMP): requirements.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo ">>> Installing pinned packages into $(VENV)."
	@echo ">>> The first install on a machine compiles llama-cpp-python from source (about 6-10 minutes on"
	@echo ">>> 2 cores; pip shows 'Building wheel for llama-cpp-python ... still running'); later installs"
	@echo ">>> reuse pip's wheel cache and take seconds."
	$(VENV)/bin/pip install --disable-pip-version-check $(PIP_FLAGS) -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the browser tests (Playwright cannot download its own browser here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo ">>> Installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

run: install
	$(VENV)/bin/streamlit run app.py --server.address localhost --server.port $(PORT)

test: install chromium
	$(VENV)/bin/ruff check core tests bench pages app.py
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not e2e and not slow"

lint: install
	$(VENV)/bin/ruff check core tests bench pages app.py

bench: install
	$(PY) bench/inference.py --quick
	$(PY) bench/finetune.py --quick
	$(PY) bench/default_run.py --quick

clean:
	rm -rf $(VENV) .studio
