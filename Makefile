# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgetl-installed
DEMO_DIR ?= demo-out
PYTEST_ARGS ?=

.PHONY: demo test lint bench bench-criteria bench-fidelity bench-quantize bench-pipeline clean venv

venv: $(STAMP)

# torch/torchvision are pinned here (not in pyproject) so users on Jetson keep JetPack's own torch.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[onnx,openvino,mobile,dev]'
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO_DIR)
	$(BIN)/edgetl finetune --model efficientnet_lite0 --data mnist5k -o $(DEMO_DIR)/teacher.pt --overwrite
	$(BIN)/edgetl eval $(DEMO_DIR)/teacher.pt --data mnist5k --split test

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check edgetl exporters benchmarks tests

# edgetl harness p50 vs OpenVINO benchmark_app on the same IR (latency: run on an idle machine).
bench-fidelity: $(STAMP)
	flock /tmp/edgetl-bench.lock $(BIN)/python -m benchmarks.suites.fidelity --threads 2 --time 10 --repeats 3

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
