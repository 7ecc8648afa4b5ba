# opt-coinfer: every target does its own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTO_SRC := protos/coinfer/v1/coinfer.proto
PROTO_OUT := protos/coinfer/v1/coinfer_pb2.py protos/coinfer/v1/coinfer_pb2_grpc.py protos/coinfer/v1/coinfer_pb2.pyi
FMNIST_DIR := /usr/share/datasets/fashion-mnist
# bench-link / demo knobs: device CPU quota (fraction of one CPU) and uplink rate
QUOTA ?= 0.1
RATES ?= 0.5 1 2
DEMO_RATE ?= 0.05

DEVICE_VENV ?= .venv-device

.PHONY: all venv device-venv protos data test test-fast demo bench bench-attack bench-bank bench-link bench-load bench-netns bench-operating bench-ranking bench-stream bench-graph clean

all: test

# The venv is rebuilt only when the declared dependencies change.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[cloud,device,export,ray,test]'
	touch $@

venv: $(STAMP)

# the lean device environment, from scratch: `.[device]` without torch (about 200 MB)
device-venv:
	rm -rf $(DEVICE_VENV)
	$(PYTHON) -m venv $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/python -m pip install -q -U pip
	$(DEVICE_VENV)/bin/python -m pip install -q '.[device]'
	@if $(DEVICE_VENV)/bin/python -c 'import torch' 2>/dev/null; then echo "error: torch got installed"; exit 1; fi
	@echo "$(DEVICE_VENV): $$(du -sm $(DEVICE_VENV) | cut -f1) MB, no torch"

protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)

# Fashion-MNIST from Debian's package when we can install it; otherwise the code
# falls back to torchvision's download and says what to install when that fails too.
data:
	@if [ ! -d $(FMNIST_DIR) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -q dataset-fashion-mnist || \
		 (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null 2>&1 || \
		echo "note: apt-get could not install dataset-fashion-mnist"; fi

test: $(STAMP) data
	$(PY) -m pytest -q tests

# the same suite without the tests marked slow (over ~10 s each: training, shaped links, ...)
test-fast: $(STAMP) data
	$(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP) data
	$(PY) -m bench.demo --quota $(QUOTA) --rate-mbps $(DEMO_RATE)

bench: $(STAMP) data
	$(PY) -m bench.runtime

bench-attack: $(STAMP) data
	$(PY) -m bench.attack

bench-bank: $(STAMP) data
	$(PY) -m bench.bank

bench-load: $(STAMP) data
	$(PY) -m bench.load

# torch and ONNX Runtime devices side by side, and the lean device venv built from scratch
.PHONY: bench-device
bench-device: $(STAMP) data device-venv
	$(PY) -m bench.device_runtime --device-venv $(DEVICE_VENV)

# root only: namespaces + tc for the links, a cgroup quota for the device
bench-link: $(STAMP) data
	$(PY) -m bench.link --quota $(QUOTA)

# root only: auto over the bank at operating points (quota x shaped uplink), 2,000 images per run
bench-operating: $(STAMP) data
	$(PY) -m bench.operating

# root only: pipelined frames (depth 1 vs 4) and the throughput objective on shaped links
bench-stream: $(STAMP) data
	$(PY) -m bench.stream --quota $(QUOTA)

# channel rankings at a cut on fmnist-vgg: BN-folded vs mean absolute activation
bench-ranking: $(STAMP) data
	$(PY) -m bench.ranking

# torchvision convnets (resnet18, mobilenet_v2, random weights): cuts from the graph, head/tail times
bench-graph: $(STAMP) data
	$(PY) -m bench.graph_profile

# root only: TCP goodput over the shaped veth vs the tbf rate, and the CPU quota's slowdown
bench-netns: $(STAMP) data
	$(PY) -m bench.netns --quota $(QUOTA)

clean:
	rm -rf $(VENV) $(DEVICE_VENV) build *.egg-info .pytest_cache .hypothesis
