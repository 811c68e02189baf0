"""Shared test set-up: import path, IDX writers and small data folders."""

import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


def run_python(args, env=None, timeout=300, **kwargs):
  """Runs `python ARGS` in the repo root with output captured.

  Args:
    args: the script and its arguments, e.g. ['main.py', '--workdir=W'].
    env: variables added to this process's environment.
    timeout: seconds; a hung run fails the test instead of blocking CI.
    **kwargs: more subprocess.run arguments.
  """
  return subprocess.run([sys.executable, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, **(env or {})), **kwargs)


def write_idx(path, array, magic=None):
  """Writes `array` (uint8) as an IDX file; gzip-compressed if path ends .gz."""
  array = np.asarray(array, np.uint8)
  header = magic if magic is not None else struct.pack(
      '>HBB', 0, 0x08, array.ndim)
  header += struct.pack(f'>{array.ndim}I', *array.shape)
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(header + array.tobytes())


def make_idx_dir(path, num_train=64, num_test=20, size=28, seed=0, gz=False):
  """A folder of the four MNIST IDX files holding random images and labels.

  Labels are learnable: each class lights up its own horizontal band.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(path, exist_ok=True)
  suffix = '.gz' if gz else ''
  for split, n in (('train', num_train), ('t10k', num_test)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    for i, label in enumerate(labels):
      row = int(label) * size // 10
      images[i, row:row + 2, :] = 255
    write_idx(os.path.join(path, f'{split}-images-idx3-ubyte{suffix}'),
              images)
    write_idx(os.path.join(path, f'{split}-labels-idx1-ubyte{suffix}'),
              labels)
  return path


@pytest.fixture
def idx_dir(tmp_path):
  return make_idx_dir(str(tmp_path / 'idx'))


@pytest.fixture(scope='session')
def small_data_dir(tmp_path_factory):
  """256 training and 50 test images: 32 steps per epoch at batch 8."""
  return make_idx_dir(str(tmp_path_factory.mktemp('small_data')),
                      num_train=256, num_test=50)
