# tinymeta: `make demo` and `make test` work from a clean clone with Python 3.11 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test gradcheck bench clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tinymeta needs Python >= 3.11, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

DEMO_ITERATIONS ?= 25000
DEMO_DIR        ?= runs/demo

## demo: set up, then meta-train MAML on sinusoids with the paper's settings (DEMO_ITERATIONS iterations,
##       9-15 s once compiled), print the 5-shot test table and the paths of the plots
demo: $(STAMP)
	$(BIN)/tinymeta train --algo maml --task sinusoid --iterations $(DEMO_ITERATIONS) --out $(DEMO_DIR) --overwrite

## gradcheck: set up, then check every derivative of the engine against finite differences
gradcheck: $(STAMP)
	$(BIN)/tinymeta gradcheck

## test: set up, then run every test (notebooks included), then the kernel tests again as plain Python
test: $(STAMP)
	$(BIN)/python -m pytest
	NUMBA_DISABLE_JIT=1 $(BIN)/python -m pytest -m "kernels and not slow" -p no:cacheprovider -q

## bench: install the optional peers (extra `bench`: PyTorch 2.13.0 CPU, JAX), time tinymeta against them, write BENCHMARKS.md
##        options through BENCH_ARGS, e.g. make bench BENCH_ARGS="--quick --workloads 'sinusoid-*'"
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
