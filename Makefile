# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=
CKPT_DIR ?= ckpts

.PHONY: demo test bench-gpu screenshots clean

$(VENV)/.runtime-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.runtime-installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The project itself, editable: `from leffa import ...`, `python -m leffa` and train/ work from any folder.
$(VENV)/.project-installed: $(VENV)/.runtime-installed pyproject.toml
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --editable .
	touch $@

# With the released try-on weights in $(CKPT_DIR) the app serves them; without, the built-in tiny demo model
# (--no-download: the page then says which files are missing and how to fetch them).
demo: $(VENV)/.project-installed
	@if $(PY) -m leffa download virtual_tryon --check --ckpt-dir $(CKPT_DIR) >/dev/null 2>&1; then \
		$(PY) app.py --ckpt-dir $(CKPT_DIR) $(ARGS); \
	else \
		echo "No released weights in $(CKPT_DIR): starting the built-in tiny demo model."; \
		echo "For the real model: $(PY) -m leffa download virtual_tryon --ckpt-dir $(CKPT_DIR)"; \
		$(PY) app.py --ckpt-dir $(CKPT_DIR) --no-download $(ARGS); \
	fi

test: $(VENV)/.dev-installed $(VENV)/.project-installed
	$(PY) -m pytest $(ARGS)

# The app's pictures in the README and docs/figures/ (needs Debian's chromium and chromium-driver).
screenshots: $(VENV)/.dev-installed $(VENV)/.project-installed
	OMP_NUM_THREADS=1 $(PY) -m tests.screenshots --out docs/figures $(ARGS)

# On a CUDA machine: about 8 minutes, writes bench/RESULTS-gpu.md (ARGS=--quick: a tiny smoke run anywhere).
bench-gpu: $(VENV)/.dev-installed $(VENV)/.project-installed
	PYTHONUNBUFFERED=1 $(PY) -m bench.gpu $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
