# Set-up is part of every target: `make run` and `make test` work on a fresh machine.
VENV    := .venv
PY      := $(VENV)/bin/python
# The CPU build of torch==2.13.0 lies in /opt/wheels on these machines; elsewhere pip uses PyPI.
PIP_FLAGS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PORT    ?= 8501

# --- llama-cpp-python: a portable build by default --------------------------------------------
# PyPI has no wheel for this platform, so pip compiles llama.cpp. Left alone it compiles for the
# build machine's CPU (-march=native): AMX or AVX-512 instructions that another machine (or a VM
# that advertises but traps them) kills with SIGILL. The default build targets the x86-64 AVX2
# level with every newer extension off; arm64 builds its baseline. `make install NATIVE=1` opts
# into a native build (faster on the machine that built it, see bench/build_compare.py); the choice
# is remembered in $(VENV)/.llama-build, so a later `make run` keeps it until `make install NATIVE=0`.
# pip's own wheel cache ignores CMAKE_ARGS, so we build the wheel ourselves, without that cache,
# into a folder named after the exact flags (and, for a native build, this CPU's flags), and
# install from there with --force-reinstall.
# The version pinned in requirements.txt (one source of truth; the second pip install must find it here).
LLAMA_VERSION := $(shell sed -n 's/^llama-cpp-python==\([0-9.]*\).*/\1/p' requirements.txt)
ARCH    := $(shell uname -m)
NATIVE  ?= $(if $(filter native,$(shell cat $(VENV)/.llama-build 2>/dev/null)),1,0)
ifeq ($(NATIVE),1)
LLAMA_BUILD := native
LLAMA_CMAKE := -DGGML_NATIVE=ON
else ifeq ($(ARCH),x86_64)
LLAMA_BUILD := portable
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
	-DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
else
LLAMA_BUILD := portable
LLAMA_CMAKE := -DGGML_NATIVE=OFF
endif
# A native wheel only suits CPUs with the same flags: its folder name carries them.
CPU_FLAGS    := $(if $(filter native,$(LLAMA_BUILD)),$(shell grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null),)
LLAMA_KEY    := $(shell echo "$(LLAMA_VERSION) $(ARCH) $(LLAMA_CMAKE)$(if $(CPU_FLAGS), $(CPU_FLAGS))" | sha1sum | cut -c1-10)
LLAMA_WHEELS := $(HOME)/.cache/bettertogether-studio/llama-cpp-python-$(LLAMA_VERSION)-$(LLAMA_BUILD)-$(LLAMA_KEY)
STAMP   := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)-$(LLAMA_BUILD)-$(LLAMA_KEY)
RAY_STAMP := $(VENV)/.ray-installed-$(shell sha1sum requirements-ray.txt | cut -c1-12)
# llama.cpp's own converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py, their `conversion` package and
# gguf-py) ship in the sources of the pinned llama-cpp-python, not in its wheel: the sources are downloaded once
# per machine (76 MB) and the converters unpacked into the virtualenv, where core/lms/convert.py finds them.
LLAMA_SDIST := $(HOME)/.cache/bettertogether-studio/llama-cpp-python-$(LLAMA_VERSION)-sources
CONVERTERS  := $(VENV)/share/llama.cpp-$(LLAMA_VERSION)

.PHONY: install install-ray converters llama-wheel llama-wheel-dir doctor run test test-fast lint bench bench-build chromium clean

# The wheel folder is reused by every later install on this machine with the same flags.
llama-wheel:
	@if ! ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1; then \
		echo ">>> Compiling llama-cpp-python $(LLAMA_VERSION), $(LLAMA_BUILD) build for $(ARCH) (about 6-10 minutes on"; \
		echo ">>> 2 cores, once per machine; pip prints 'Building wheel for llama-cpp-python ... still running')."; \
		test -x $(PY) || python3 -m venv $(VENV); \
		rm -rf $(LLAMA_WHEELS).tmp && mkdir -p $(LLAMA_WHEELS).tmp && \
		CMAKE_ARGS="$(LLAMA_CMAKE)" FORCE_CMAKE=1 $(VENV)/bin/pip wheel --disable-pip-version-check --no-cache-dir \
			--no-deps --no-binary llama-cpp-python -w $(LLAMA_WHEELS).tmp llama-cpp-python==$(LLAMA_VERSION) && \
		rm -rf $(LLAMA_WHEELS) && mv $(LLAMA_WHEELS).tmp $(LLAMA_WHEELS); \
	fi

# The folder of this build's wheel (bench/build_compare.py asks for the native one).
llama-wheel-dir:
	@echo $(LLAMA_WHEELS)

$(STAMP): requirements.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(MAKE) --no-print-directory llama-wheel NATIVE=$(NATIVE)
	@echo ">>> Installing pinned packages into $(VENV) (llama-cpp-python: $(LLAMA_BUILD) build)."
	$(VENV)/bin/pip install --disable-pip-version-check --force-reinstall --no-deps --no-index \
		--find-links $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_VERSION)
	$(VENV)/bin/pip install --disable-pip-version-check $(PIP_FLAGS) --find-links $(LLAMA_WHEELS) \
		--only-binary llama-cpp-python -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@echo $(LLAMA_BUILD) > $(VENV)/.llama-build
	@touch $(STAMP)
	@echo ">>> Checking that the embedded models run on this CPU (python -m core doctor)."
	@$(PY) -m core doctor || { rm -f $(STAMP); exit 1; }

# The `studio` command: an editable install of this checkout (its dependencies are the pinned ones above).
$(VENV)/bin/studio: pyproject.toml $(STAMP)
	$(VENV)/bin/pip install --disable-pip-version-check --no-deps $(PIP_FLAGS) -e .
	@touch $@

$(CONVERTERS)/convert_hf_to_gguf.py:
	@test -x $(PY) || python3 -m venv $(VENV)
	@if [ ! -f $(LLAMA_SDIST)/llama_cpp_python-$(LLAMA_VERSION).tar.gz ]; then \
		echo ">>> Downloading the sources of llama-cpp-python $(LLAMA_VERSION) for llama.cpp's converters (76 MB, once)"; \
		rm -rf $(LLAMA_SDIST).tmp && $(VENV)/bin/pip download --disable-pip-version-check --no-deps --no-build-isolation \
			--no-binary :all: -d $(LLAMA_SDIST).tmp llama-cpp-python==$(LLAMA_VERSION) >/dev/null 2>&1 || \
		$(VENV)/bin/pip download --disable-pip-version-check --no-deps --no-binary :all: -d $(LLAMA_SDIST).tmp \
			llama-cpp-python==$(LLAMA_VERSION) && rm -rf $(LLAMA_SDIST) && mv $(LLAMA_SDIST).tmp $(LLAMA_SDIST); \
	fi
	@rm -rf $(CONVERTERS).tmp && mkdir -p $(CONVERTERS).tmp
	@tar xzf $(LLAMA_SDIST)/llama_cpp_python-$(LLAMA_VERSION).tar.gz --strip-components=3 -C $(CONVERTERS).tmp \
		$(addprefix llama_cpp_python-$(LLAMA_VERSION)/vendor/llama.cpp/,convert_hf_to_gguf.py convert_lora_to_gguf.py conversion gguf-py LICENSE)
	@rm -rf $(CONVERTERS) && mv $(CONVERTERS).tmp $(CONVERTERS)
	@echo ">>> llama.cpp's converters are in $(CONVERTERS)"

converters: $(CONVERTERS)/convert_hf_to_gguf.py

install: $(STAMP) $(VENV)/bin/studio converters

# Ray, for sweeps on a cluster ("executor": {"kind": "ray"}): an extra, not in `make install` (about 260 MB;
# the app imports it only when a sweep asks for Ray). `make test` installs it: its tests start a local Ray.
$(RAY_STAMP): requirements-ray.txt $(STAMP)
	$(VENV)/bin/pip install --disable-pip-version-check $(PIP_FLAGS) -r requirements-ray.txt
	@rm -f $(VENV)/.ray-installed-*
	@touch $(RAY_STAMP)

install-ray: install $(RAY_STAMP)

doctor: install
	$(PY) -m core doctor

# Debian's chromium for the browser tests (Playwright cannot download its own browser here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo ">>> Installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

run: install
	$(VENV)/bin/streamlit run app.py --server.address localhost --server.port $(PORT)

# pytest's exit status 5 means it collected no tests: a failure, said in words.
test: install install-ray chromium
	$(VENV)/bin/ruff check core tests bench pages app.py
	@echo "$(PY) -m pytest"; $(PY) -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo ">>> pytest collected no tests (exit 5): failing" >&2; fi; exit $$status

test-fast: install install-ray
	$(PY) -m pytest -m "not e2e and not slow"

lint: install
	$(VENV)/bin/ruff check core tests bench pages app.py

bench: install
	$(PY) bench/inference.py --quick
	$(PY) bench/finetune.py --quick
	$(PY) bench/default_run.py --quick

# Portable vs native llama-cpp-python on this machine, same run (compiles the native wheel once, ~8 min).
bench-build: install
	$(PY) bench/build_compare.py

clean:
	rm -rf $(VENV) .studio
