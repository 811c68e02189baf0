"""Where the CNN's training step spends its time on this CPU.

  .venv/bin/python bench/profile_layers.py               # per block
  .venv/bin/python bench/profile_layers.py --mode=ops    # per XLA op

`blocks` times the forward pass and forward+backward of each block of the
quick-start CNN on its own (jitted, best of 3 runs of 50), at batch 32 and
128. Input gradients are taken where the real step needs them (not for the
first conv).

`ops` runs the trainer's whole jitted step (`train.train_step`) 50 times
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
import distributed  # pylint: disable=wrong-import-position
import host_memory  # pylint: disable=wrong-import-position

# The trainer's XLA flags and malloc settings (main.py sets them), before
# JAX starts.
distributed.add_default_xla_flags()
host_memory.keep_freed_memory()

# pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import models
import optimizers
import train
# pylint: enable=g-import-not-at-top,wrong-import-position


def best_seconds(fn, *args, n=50):
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(3):
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
  for batch in (32, 128):
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


def ops(top=20, steps=50):
  for batch in (32, 128):
    state = train.create_train_state(
        models.create_model('cnn', 10),
        optimizers.create_optimizer('sgd', 0.01, 0.9), (28, 28, 1), 0)
    rng = np.random.RandomState(0)
    images = jnp.asarray(rng.randint(0, 256, (batch, 28, 28, 1), np.uint8))
    labels = jnp.asarray(rng.randint(0, 10, (batch,)).astype(np.int32))
    # The compiled program itself is stepped, so the names are its own (and
    # it is compiled once: jit's cache does not hold ahead-of-time builds).
    step = jax.jit(train.train_step, donate_argnums=0).lower(
        state, images, labels).compile()
    sources = op_sources(step.as_text())
    for _ in range(10):
      state = step(state, images, labels)
    jax.block_until_ready(state)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(steps):
      state = step(state, images, labels)
    jax.block_until_ready(state)
    seconds = (time.perf_counter() - start) / steps
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt -
              faults) / steps
    with tempfile.TemporaryDirectory() as trace_dir:
      with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(steps):
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
        total[e['name']] += e['dur'] / 1e3 / steps
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
        f'{host_memory.applied or "unchanged"}')
  {'blocks': blocks, 'ops': ops}[args.mode]()


if __name__ == '__main__':
  main()
