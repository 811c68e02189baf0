"""Where the CNN's training step spends its time on this CPU, per block.

  .venv/bin/python bench/profile_layers.py

Times the forward pass and forward+backward of each block of the quick-start
CNN on its own (jitted, best of 3 runs of 50), at batch 32 and 128, with
the XLA flags the trainer runs with. Input gradients are taken where the
real step needs them (not for the first conv).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
import distributed  # pylint: disable=wrong-import-position

# The trainer's XLA flags (main.py sets them), before JAX starts.
distributed.add_default_xla_flags()

# pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
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


def main():
  print(f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
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


if __name__ == '__main__':
  main()
