"""Shared test set-up: import path, warning filters, IDX writers, small
data folders and splits, and checks of whole runs."""

import gzip
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Set before JAX is imported, here and (inherited) in every subprocess: tests
# run on the CPU even where a GPU is present, and programs compiled once are
# reused from disk by later processes (seconds off each subprocess; the same
# executable, so results are unchanged).
os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    tempfile.gettempdir(), 'trainer-tests-jax-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

# In-process runs use the XLA flags and malloc settings main.py sets, as
# users' runs do (summary.json's `runtime` then matches theirs).
import runtime  # pylint: disable=g-import-not-at-top,wrong-import-position
runtime.setup(log=False)
import data_sources  # pylint: disable=g-import-not-at-top,wrong-import-position

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


def project_modules() -> list[str]:
  """The importable names of this project's own modules: the top-level
  files, bench/'s (imported with bench/ on the path), configs.* and tests."""
  names = [f[:-3] for folder in (ROOT, os.path.join(ROOT, 'bench'))
           for f in sorted(os.listdir(folder)) if f.endswith('.py')]
  configs = [f'configs.{f[:-3]}' for f in sorted(os.listdir(
      os.path.join(ROOT, 'configs'))) if f.endswith('.py')]
  tests = [f[:-3] for f in sorted(os.listdir(os.path.dirname(
      os.path.abspath(__file__)))) if f.endswith('.py')]
  return names + configs + tests


def own_deprecations_filter() -> str:
  """A pytest filterwarnings entry that shows the DeprecationWarnings of
  every project module (pytest.ini ignores everyone else's)."""
  names = '|'.join(re.escape(n) for n in project_modules())
  return f'default::DeprecationWarning:({names})$'


def pytest_configure(config):
  # Added after pytest.ini's entries, so it takes precedence over them.
  config.addinivalue_line('filterwarnings', own_deprecations_filter())


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


def make_image_folder(path, classes=('cat', 'dog', 'fox'), num_train=8,
                      num_test=3, size=(12, 10), seed=0, validation=0):
  """data_dir/{train,test[,validation]}/<class>/NNN.png: RGB images, learnable
  (each class lights its own band), as PNG and (every fourth) JPEG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  height, width = size
  counts = {'train': num_train, 'test': num_test, 'validation': validation}
  for split, n in counts.items():
    for label, name in enumerate(classes if n else ()):
      folder = os.path.join(path, split, name)
      os.makedirs(folder, exist_ok=True)
      for i in range(n):
        image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
        row = label * height // len(classes)
        image[row:row + 2, :, label % 3] = 255
        ext = 'jpg' if i % 4 == 3 else 'png'
        Image.fromarray(image).save(os.path.join(folder, f'{i:03d}.{ext}'))
  return path


def numbered_split(n):
  """An in-memory split whose image i is the number i (one pixel)."""
  images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
  return data_sources.Split(images=images, labels=np.arange(n) % 10)


def streamed(split):
  """The same examples behind a non-memory split type, so batches are read
  by Grain's threads as for files."""
  return data_sources.Subset(split, np.arange(len(split)))


@pytest.fixture
def idx_dir(tmp_path):
  return make_idx_dir(str(tmp_path / 'idx'))


@pytest.fixture(scope='session')
def small_data_dir(tmp_path_factory):
  """256 training and 50 test images: 32 steps per epoch at batch 8."""
  return make_idx_dir(str(tmp_path_factory.mktemp('small_data')),
                      num_train=256, num_test=50)


def tiny_config(data_dir, **overrides):
  """configs/default.py on an IDX folder at batch 8: for in-process runs."""
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.data_dir = data_dir
  config.batch_size = 8
  config.eval_batch_size = 20
  config.log_every_steps = 10
  config.checkpoint_every_steps = 24
  config.max_checkpoints_to_keep = 10
  config.update(overrides)
  return config


def error_lines(stderr):
  return [l for l in stderr.splitlines() if l.startswith('error:')]


TIMING_KEYS = {'wall_seconds', 'train_seconds', 'train_images_per_second'}
# TensorBoard tags whose values are timings, not results.
TIMING_TAGS = {'images_per_second', 'steps_per_sec', 'uptime'}


def checkpoint_steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir,
                                                        'checkpoints'))
                if s.isdigit())


def final_state(workdir):
  """(step, state as numpy) of the newest checkpoint in workdir."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step = checkpoint_steps(workdir)[-1]
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  return step, ocp.StandardCheckpointer().restore(path)


def scalar_points(workdir):
  """{(tag, step): value} over all event files; fails on a duplicate point."""
  import event_files  # pylint: disable=g-import-not-at-top
  points = {}
  for path in event_files.event_paths(workdir):
    for event in event_files.read_events(path):
      for value in event.summary.value:
        if value.tag in TIMING_TAGS or value.tag.startswith('_hparams_'):
          continue
        key = (value.tag, event.step)
        assert key not in points, f'duplicate TensorBoard point {key}'
        points[key] = value.tensor.SerializeToString()
  return points


def assert_same_run(workdir, reference, total_steps):
  """Bitwise: final state, every non-timing summary value, every point."""
  import jax  # pylint: disable=g-import-not-at-top
  step_a, state_a = final_state(workdir)
  step_b, state_b = final_state(reference)
  assert step_a == step_b == total_steps
  leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
  assert len(leaves_a) == len(leaves_b)
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(a, b)  # Bitwise: no tolerance.
  summary_a = json.load(open(os.path.join(workdir, 'summary.json')))
  summary_b = json.load(open(os.path.join(reference, 'summary.json')))
  assert set(summary_a) == set(summary_b)
  for key in set(summary_a) - TIMING_KEYS - {'config'}:
    assert summary_a[key] == summary_b[key], key
  assert scalar_points(workdir) == scalar_points(reference)


def snapshot(folder):
  """Every file under `folder` with its size and modification time, but the
  lock file, which names whichever trainer last held the workdir."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      if name == '.lock':
        continue
      path = os.path.join(root, name)
      out[path] = (os.path.getsize(path), os.path.getmtime(path))
  return out
