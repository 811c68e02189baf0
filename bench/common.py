"""What the benchmark's modes share: data, machine facts, children, reports.

Fashion-MNIST from the local IDX files; the machine's facts (backend,
device, measured matmul peaks, the CNN's training FLOPs per image), measured
in a child so that the parent never starts JAX (on a GPU it then holds no
device memory while the contenders run); running bench/benchmark.py or
main.py in a fresh process; the XLA flags main.py gives the trainer; the
quick-start loop's epochs as a whole process (the baseline of two modes); a
generated image folder; and printing a table, or writing it with --out.
"""

import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time

import contenders

DEFAULT_DATA = '/usr/share/datasets/fashion-mnist'
# The entry point every child runs, relative to the repository's root.
BENCHMARK = os.path.join('bench', 'benchmark.py')
# Matmul sizes for the peak: large enough to reach it on each kind of
# device, small enough to take seconds on a CPU.
PEAK_MATMUL_SIZE = {'cpu': 2048, 'accelerator': 8192}
PEAK_REPEATS = 5
# The batch whose compiled step gives the CNN's training FLOPs per image.
FLOPS_BATCH = 32
# Of a failing child's errors, how much the parent shows.
ERROR_TAIL_CHARS = 3000
# Threads writing a generated image folder.
WRITE_THREADS = 8


def load(data_dir):
  """Fashion-MNIST (or any IDX folder) at data_dir, in memory."""
  import data_sources  # pylint: disable=g-import-not-at-top
  return data_sources.load_dataset('fashion_mnist', data_dir)


def peak_flops(n, dtype='float32', repeats=PEAK_REPEATS):
  """Matmul FLOP/s, the machine's practical peak for this work."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype))
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  times = [contenders.timed(lambda: matmul(a).block_until_ready())
           for _ in range(repeats)]
  return 2 * n**3 / min(times)


def train_flops_per_image(batch_size=FLOPS_BATCH):
  """FLOPs of one training step of the CNN per image, from XLA's cost
  analysis."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import models  # pylint: disable=g-import-not-at-top
  import optimizers  # pylint: disable=g-import-not-at-top
  import steps  # pylint: disable=g-import-not-at-top
  state = steps.create_train_state(
      models.create_model('cnn', 10),
      optimizers.create_optimizer('sgd', contenders.LEARNING_RATE,
                                  contenders.MOMENTUM), (28, 28, 1), 0)
  images = jnp.zeros((batch_size, 28, 28, 1))
  labels = jnp.zeros((batch_size,), jnp.int32)
  compiled = jax.jit(steps.train_step).lower(state, images, labels).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost['flops'] / batch_size


def machine_facts(args):
  """Child mode: the backend, its device, matmul peaks and the CNN's
  training FLOPs, as JSON (with XLA's defaults)."""
  del args
  import jax  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  n = PEAK_MATMUL_SIZE['cpu' if backend == 'cpu' else 'accelerator']
  print(json.dumps({
      'backend': backend, 'device': jax.devices()[0].device_kind,
      'device_count': jax.device_count(),
      'peak_flops': peak_flops(n),
      'peak_flops_bf16': None if backend == 'cpu' else peak_flops(
          n, dtype='bfloat16'),
      'train_flops_per_image': train_flops_per_image()}))


def describe(facts) -> str:
  """The machine in words, from machine_facts."""
  if facts['backend'] == 'cpu':
    return f'{os.cpu_count()} CPU cores'
  return (f'{facts["device_count"]} x {facts["device"]} ({facts["backend"]}),'
          f' {os.cpu_count()} CPU cores')


def run_or_exit(command, env=None) -> str:
  """Runs `command` in the repository's root; its output, or exits with the
  end of its errors."""
  proc = subprocess.run(command, cwd=contenders.ROOT, env=env,
                        capture_output=True, text=True)
  if proc.returncode:
    sys.exit(f'{" ".join(command[:4])} failed:\n'
             f'{proc.stderr[-ERROR_TAIL_CHARS:]}')
  return proc.stdout


def benchmark_command(mode, data_dir, **flags) -> list[str]:
  """The command line of bench/benchmark.py --mode=MODE with `flags`."""
  return [sys.executable, BENCHMARK, f'--mode={mode}',
          f'--data_dir={data_dir}'] + [f'--{k}={v}' for k, v in flags.items()]


def child(mode, data_dir, env=None, **flags) -> dict:
  """Runs bench/benchmark.py --mode=MODE in a fresh process; the last line
  of its output, as JSON."""
  out = run_or_exit(benchmark_command(mode, data_dir, **flags), env=env)
  return json.loads(out.splitlines()[-1])


def main_command(workdir, config, data_dir, *extra) -> list[str]:
  """The command line of main.py training `config` into `workdir`."""
  return [sys.executable, 'main.py', f'--workdir={workdir}',
          f'--config={config}', f'--config.data_dir={data_dir}', *extra]


@contextlib.contextmanager
def scratch_workdir(name):
  """A workdir path under /tmp for one main.py run, removed afterwards."""
  workdir = f'/tmp/bench-{name}-{os.getpid()}'
  try:
    yield workdir
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def trainer_xla_flags() -> str:
  """The XLA_FLAGS main.py runs the trainer with, here (this process's own
  environment is left as it is)."""
  import runtime  # pylint: disable=g-import-not-at-top
  saved = os.environ.get('XLA_FLAGS')
  try:
    runtime.add_default_xla_flags()
    return os.environ.get('XLA_FLAGS', '')
  finally:
    if saved is None:
      os.environ.pop('XLA_FLAGS', None)
    else:
      os.environ['XLA_FLAGS'] = saved


def installed_kinds(kinds, needs=None) -> list[str]:
  """The contender kinds whose libraries are installed here; says which
  are left out and why."""
  kept = []
  for kind in kinds:
    missing = contenders.missing_libraries(kind, needs)
    if missing:
      print(f'{kind}: left out, {" and ".join(missing)} not installed '
            f'(.venv/bin/pip install -r bench/requirements.txt)', flush=True)
    else:
      kept.append(kind)
  return kept


def reference_epochs(args):
  """Child mode: the quick-start loop for --epochs epochs at its batch
  size, its test accuracy after each."""
  data = load(args.data_dir)
  batch = contenders.QUICK_START_BATCH_SIZE
  runner = contenders.make('reference', data, batch)
  steps = len(data.train) // batch
  for epoch in range(1, args.epochs + 1):
    runner.run(steps)
    print(f'EPOCH {epoch} {runner.evaluate():.4f}', flush=True)


def timed_reference_epochs(data_dir, epochs):
  """The quick-start loop's `epochs` in a fresh process: (whole process
  seconds, test accuracy after each epoch)."""
  start = time.perf_counter()
  out = run_or_exit(benchmark_command('reference_epochs', data_dir,
                                      epochs=epochs))
  seconds = time.perf_counter() - start
  return seconds, [float(l.split()[2]) for l in out.splitlines()
                   if l.startswith('EPOCH')]


def write_image_folder(path, data, num_train, num_test=1000, rgb_size=0):
  """Writes `data`'s first images as path/{train,test}/<class>/N.png (or
  random RGB images of rgb_size, if set), once; returns path."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  done = os.path.join(path, '.complete')
  if os.path.exists(done):
    return path

  def write(item):
    split, i, label = item
    if rgb_size:
      image = np.random.default_rng(i).integers(
          0, 256, (rgb_size, rgb_size, 3), dtype=np.uint8)
    else:
      image = getattr(data, split).images[i % len(getattr(data, split)), ...,
                                          0]
    folder = os.path.join(path, split, f'class{label}')
    Image.fromarray(image).save(os.path.join(folder, f'{i:06d}.png'))

  items = []
  for split, n in (('train', num_train), ('test', num_test)):
    labels = getattr(data, split).labels
    for c in range(10):
      os.makedirs(os.path.join(path, split, f'class{c}'), exist_ok=True)
    items += [(split, i, int(labels[i % len(labels)])) for i in range(n)]
  with concurrent.futures.ThreadPoolExecutor(WRITE_THREADS) as pool:
    list(pool.map(write, items))
  open(done, 'w').close()
  return path


def report(lines, out, record=None):
  """Prints a table; with --out, also writes it as OUT.md (and `record` as
  OUT.json)."""
  print('\n'.join(lines))
  if out:
    with open(out + '.md', 'w') as f:
      f.write('\n'.join(lines) + '\n')
    if record is not None:
      with open(out + '.json', 'w') as f:
        json.dump(record, f, indent=2)


def write_json(path, record):
  """Writes `record` to --json's file, if one is given."""
  if path:
    with open(path, 'w') as f:
      json.dump(record, f, indent=2)


def format_seconds(value) -> str:
  return '-' if value is None else f'{value:.1f}'
