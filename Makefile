# Two commands on a fresh machine: `make demo` (set up, train 3 seeds of lt and of the paper's
# control as one batch on Fashion-MNIST down to about 10% of the weights, draw them in one figure
# with bands and print its table) and `make test` (set up, run the fast tier of the tests;
# `make test-all` adds the slow tier, as CI runs it). All create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_ROOT := results/demo
DEMO_FLAGS := --dataset fashionmnist --arch_type fc1 --prune_iterations 11 --end_iter 2 \
	--prune_percent 20 --prune_percent_output 10 --val_size 5000 --plot_dpi 150 \
	--results_root $(DEMO_ROOT)
DEMO_FIGURE := $(DEMO_ROOT)/combined/combined_fc1_fashionmnist.png

.PHONY: setup data demo test test-all bench lint

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Debian's dataset-fashion-mnist package puts the real Fashion-MNIST in /usr/share/datasets.
data:
	@bash scripts/install_fashion_mnist.sh

demo: setup data
	$(PY) main.py --prune_type lt reinit_ticket --seed 0 1 2 $(DEMO_FLAGS)
	$(PY) combine_plots.py --results_root $(DEMO_ROOT) --out $(DEMO_ROOT)/combined --dpi 150
	@test -f $(DEMO_FIGURE) || { echo "make demo: no figure at $(DEMO_FIGURE)" >&2; exit 1; }
	@echo "tickets vs the control: $(abspath $(DEMO_FIGURE))"

# The fast tier (minutes); the slow one (tests marked `slow`: every network at full size and
# compiled, the real Ray cluster, the longer end-to-end runs) only with test-all.
test: setup
	$(PY) -m pytest -q -m "not slow"

test-all: setup
	$(PY) -m pytest -q

# `make bench` takes a few minutes; `make bench BENCH_FLAGS=--quick` is a smoke run on 1/10 of the data.
bench: setup
	$(PY) scripts/bench.py $(BENCH_FLAGS)

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

# The GPU check (docs/gpu.md). gpu-data: the real Fashion-MNIST and this commit into gpu_data/,
# to be carried to the GPU machine; gpu-check: there, with that machine's own python3 (no venv);
# gpu-check-dry-run: here, the same steps on the CPU at a tiny size.
.PHONY: gpu-data gpu-check gpu-check-dry-run
gpu-data: data
	bash scripts/gpu_check.sh --prepare

gpu-check:
	bash scripts/gpu_check.sh

gpu-check-dry-run: setup
	PYTHON=$(PY) bash scripts/gpu_check.sh --dry-run
