# Set-up is part of every target: a fresh machine needs only python3 (>= 3.11) and make.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch used on this project's machines; CUDA users: see README ("GPU").
TORCH  ?= torch==2.13.0
PRESET ?= cpu
OUT    ?= runs

# Corpora: LMLAB_DATA_DIR if set, else ../shared/data when it exists, else lmlab's default cache.
ifeq ($(origin LMLAB_DATA_DIR), undefined)
  ifneq ($(wildcard ../shared/data),)
    export LMLAB_DATA_DIR := $(abspath ../shared/data)
  endif
endif

.PHONY: run test bench gpu-check results install clean

# constraints.txt: the exact versions the tests ran with (pyproject.toml holds the supported ranges).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,tensorboard,serve,browser-test]"
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/lmlab run --preset $(PRESET) --out $(OUT)

# Two workers with one thread each: two threads per process collapse when another process runs.
test: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -q

bench: $(VENV)/.installed
	$(PY) benchmarks/train_throughput.py

# On a machine with one CUDA GPU and a CUDA build of torch (TORCH=torch==2.13.0 from the CUDA index).
gpu-check: $(VENV)/.installed
	$(PY) scripts/gpu_check.py

# Copy a finished study's results (JSON, curves, tables, report; never weights) into docs/results/.
results:
	cd $(OUT) && find . \( -name model -o -name adapter -o -name trainer -o -name '*.partial' \) -prune -o -type f \
	  \( -name '*.json' -o -name '*.jsonl' -o -name '*.png' -o -name '*.md' -o -name '*.html' \) ! -path './steps/*' -print | \
	  while read f; do mkdir -p "$(CURDIR)/docs/results/$$(dirname "$$f")" && cp "$$f" "$(CURDIR)/docs/results/$$f"; done

clean:
	rm -rf $(VENV) .pytest_cache
