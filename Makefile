# Set-up, training and tests. `make train` and `make test` do their own set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR := /usr/share/datasets/fashion-mnist
CONFIG ?= configs/fashion_mnist.py
WORKDIR ?= runs/fashion_mnist
ARGS ?=

.PHONY: venv data train test test-all gpu-bundle

# requirements-extras.txt: optional packages (PyTorch CPU for .pth weights
# and the parity tests, safetensors, huggingface_hub; mlflow-skinny and wandb
# for config.trackers); requirements-onnx.txt:
# the ONNX exporter, without its declared dependencies (the file says why).
# The tests need both.
$(VENV)/.installed: requirements.txt requirements-extras.txt requirements-onnx.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -r requirements-extras.txt
	$(PY) -m pip install -q --no-deps -r requirements-onnx.txt
	touch $@

venv: $(VENV)/.installed

# Fashion-MNIST IDX files from Debian's package (no download from elsewhere).
data:
	@if [ -f $(DATA_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is not in $(DATA_DIR). Install it with:"; \
	  echo "  sudo apt-get install dataset-fashion-mnist"; \
	  echo "or put the four MNIST-format IDX files in a folder and train with"; \
	  echo "  --config.data_dir=FOLDER"; \
	  exit 1; \
	fi

train: venv data
	$(PY) main.py --workdir=$(WORKDIR) --config=$(CONFIG) $(ARGS)

# The fast suite (not the tests marked slow) in two pytest-xdist processes;
# test-all runs every test, as CI: the slow ones after it, one at a time
# (they time kills, leases and servers). Exit 5: ARGS selected none there.
test: venv data
	$(PY) -m pytest -q -n 2 -m "not slow" --durations=5 $(ARGS)

test-all: venv data
	$(PY) -m pytest -q -n 2 -m "not slow" --durations=5 $(ARGS) || [ $$? = 5 ]
	$(PY) -m pytest -q -m slow --durations=10 $(ARGS) || [ $$? = 5 ]

# For a GPU machine with CUDA JAX and PyTorch but no network (bench/gpu_run.sh):
# the IDX files in data/ and the pure-Python packages such images lack, in
# .whl/. Both folders are git-ignored; carry them to the machine.
gpu-bundle: data
	mkdir -p data/fashion-mnist .whl
	cp $(DATA_DIR)/*-ubyte.gz data/fashion-mnist/
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: -d .whl \
	  $$(grep -E '^(clu|ml_collections)==' requirements.txt)
