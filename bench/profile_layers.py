"""Where the CNN's training step spends its time on this CPU.

  .venv/bin/python bench/profile_layers.py               # per block
  .venv/bin/python bench/profile_layers.py --mode=ops    # per XLA op

`blocks` times the forward pass and forward+backward of each block of the
quick-start CNN on its own (jitted, best of 3 runs of 50), at batch 32 and
128. Input gradients are taken where the real step needs them (not for the
first conv).

`ops` runs the trainer's whole jitted step (`steps.train_step`) 50 times
under JAX's profiler and sums the time of each XLA operation of the
compiled program, named by the model code it comes from, with the page
faults per step beside it. The profiler adds a little time of its own.

Both run with the XLA flags and malloc settings of the trainer.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
import runtime  # pylint: disable=wrong-import-position

# The trainer's XLA flags and malloc settings, as main.py sets them, before
# JAX starts.
runtime.setup(log=False)

# pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import contenders
import models
import optimizers
import steps
# pylint: enable=g-import-not-at-top,wrong-import-position

BATCHES = (32, 128)
# Calls per timed run, and runs (the best counts).
TIMED_CALLS = 50
TIMED_RUNS = 3
# ops: steps before timing, and the operations listed per batch size.
WARMUP_STEPS = 10
TOP_OPS = 20


def best_seconds(fn, *args, n=TIMED_CALLS):
  """Seconds per call of fn(*args), the best of TIMED_RUNS runs of n."""
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(TIMED_RUNS):
    start = time.perf_counter()
    for _ in range(n):
      out = fn(*args)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - start) / n)
  return best


class ConvBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.features, (3, 3))(x))
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Head(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


def blocks():
  """Prints each block's forward and forward+backward time."""
  for batch in BATCHES:
    blocks = [('conv1 block', ConvBlock(32), (batch, 28, 28, 1), (0,)),
              ('conv2 block', ConvBlock(64), (batch, 14, 14, 32), (0, 1)),
              ('dense head', Head(), (batch, 7, 7, 64), (0, 1))]
    rows = []
    for name, module, shape, argnums in blocks:
      x = jnp.ones(shape)
      params = module.init(jax.random.PRNGKey(0), x)
      loss = lambda p, x, m=module: m.apply(p, x).sum()
      forward = best_seconds(jax.jit(loss), params, x)
      both = best_seconds(jax.jit(jax.grad(loss, argnums=argnums)), params,
                          x)
      rows.append((name, forward, both))
    total = sum(r[2] for r in rows)
    for name, forward, both in rows:
      print(f'batch {batch} {name}: forward {forward * 1e3:.2f} ms, '
            f'forward+backward {both * 1e3:.2f} ms ({100 * both / total:.0f}%'
            f'), {batch / both:.0f} images/s on its own')


def op_sources(hlo_text: str) -> dict:
  """{instruction name: the model code it comes from} for the entry
  computation of compiled HLO text (from each op's metadata op_name)."""
  entry = hlo_text[hlo_text.index('\nENTRY'):]
  sources = {}
  for name, rest in re.findall(r'^\s*(?:ROOT )?%?([\w.-]+) = (.*)$', entry,
                               re.M):
    source = re.search(r'op_name="([^"]+)"', rest)
    shape = rest.split(' ', 1)[0]
    sources[name] = (source.group(1).replace('jit(train_step)/', '')
                     if source else '') + f' {shape}'
  return sources


def ops(top=TOP_OPS, num_steps=TIMED_CALLS):
  """Prints the step's time and its `top` XLA operations by time."""
  for batch in BATCHES:
    state = steps.create_train_state(
        models.create_model('cnn', 10),
        optimizers.create_optimizer('sgd', contenders.LEARNING_RATE,
                                    contenders.MOMENTUM),
        (28, 28, 1), 0)
    rng = np.random.RandomState(0)
    images = jnp.asarray(rng.randint(0, 256, (batch, 28, 28, 1), np.uint8))
    labels = jnp.asarray(rng.randint(0, 10, (batch,)).astype(np.int32))
    # The compiled program itself is stepped, so the names are its own (and
    # it is compiled once: jit's cache does not hold ahead-of-time builds).
    step = jax.jit(steps.train_step, donate_argnums=0).lower(
        state, images, labels).compile()
    sources = op_sources(step.as_text())
    for _ in range(WARMUP_STEPS):
      state = step(state, images, labels)
    jax.block_until_ready(state)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(num_steps):
      state = step(state, images, labels)
    jax.block_until_ready(state)
    seconds = (time.perf_counter() - start) / num_steps
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt -
              faults) / num_steps
    with tempfile.TemporaryDirectory() as trace_dir:
      with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(num_steps):
          state = step(state, images, labels)
        jax.block_until_ready(state)
      path = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'),
                       recursive=True)[0]
      with gzip.open(path) as f:
        events = json.load(f)
    events = events['traceEvents'] if isinstance(events, dict) else events
    total = collections.Counter()
    for e in events:
      if e.get('ph') == 'X' and e['name'] in sources:
        total[e['name']] += e['dur'] / 1e3 / num_steps
    print(f'batch {batch}: {seconds * 1e3:.2f} ms per step untraced, '
          f'{batch / seconds:.0f} images/s, {faults:.0f} page faults per '
          f'step; XLA ops under the profiler sum to '
          f'{sum(total.values()):.2f} ms:')
    for name, ms in total.most_common(top):
      print(f'  {ms:7.3f} ms  {name:26s} {sources[name]}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--mode', choices=['blocks', 'ops'], default='blocks')
  args = parser.parse_args()
  print(f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; malloc: '
        f'{runtime.malloc_applied or "unchanged"}')
  {'blocks': blocks, 'ops': ops}[args.mode]()


if __name__ == '__main__':
  main()
