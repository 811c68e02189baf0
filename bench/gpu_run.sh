#!/usr/bin/env bash
# The GPU rows of the benchmark, on a machine that has CUDA builds of JAX,
# Flax, Optax, Orbax and PyTorch (torchvision too) but no network. First,
# where there is a network: `make gpu-bundle`; then carry data/ and .whl/
# to the GPU machine and run there, from the repository's root, one part per
# call (each takes a few minutes):
#
#   bash bench/gpu_run.sh check|throughput|resnet50|end_to_end [OUT_DIR]
#
# Tables go to OUT_DIR (default: $OUT, else bench/results) as .md and .json.
set -euo pipefail
part="${1:?usage: bash bench/gpu_run.sh check|throughput|resnet50|end_to_end [OUT_DIR]}"
out="${2:-${OUT:-bench/results}}"
case "$part" in
  check|throughput|resnet50|end_to_end) ;;
  *) echo "error: unknown part '$part'; accepted: check, throughput, resnet50, end_to_end" >&2
     exit 2 ;;
esac
data=data/fashion-mnist
if [ ! -f "$data/train-images-idx3-ubyte.gz" ] || ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "error: $data or .whl/ is missing; run 'make gpu-bundle' and carry both" >&2
  exit 2
fi
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/trainer-site .whl/*.whl
export PYTHONPATH="/tmp/trainer-site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
case "$part" in
  check)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    python3 -c "
import jax, flax, optax, orbax.checkpoint, torch, torchvision
print('jax', jax.__version__, jax.devices(), '| flax', flax.__version__,
      '| optax', optax.__version__, '| torch', torch.__version__,
      torch.cuda.is_available())"
    python3 main.py --workdir=/tmp/gpu-check --config=configs/fashion_mnist.py \
      --config.data_dir="$data" --config.num_train_steps=200 ;;
  throughput)
    python3 bench/benchmark.py --data_dir="$data" --windows 3 \
      --window_images 12800 --warmup_images 3200 --out="$out/gpu_throughput" ;;
  resnet50)
    python3 bench/benchmark.py --mode=resnet50 --windows 3 \
      --out="$out/gpu_resnet50" ;;
  end_to_end)
    python3 bench/benchmark.py --mode=end_to_end --data_dir="$data" \
      --out="$out/gpu_end_to_end" ;;
esac
