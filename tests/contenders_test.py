"""Tests for bench/contenders.py: the parts that run without PyTorch."""

import collections
import os
import sys

import numpy as np

import conftest

sys.path.insert(0, os.path.join(conftest.ROOT, 'bench'))
import contenders  # pylint: disable=g-import-not-at-top,wrong-import-position


def _draw(seed, steps=25):
  batches = contenders.shuffle_buffer_batches(
      np.arange(10)[:, None] * 10, np.arange(10), 4, seed, buffer_size=4)
  return [next(batches) for _ in range(steps)]


def test_shuffle_buffer_keeps_pairs_and_reaches_every_example():
  counts = collections.Counter()
  for batch in _draw(0):
    assert batch['image'].shape == (4, 1)
    np.testing.assert_array_equal(batch['image'][:, 0], batch['label'] * 10)
    counts.update(batch['label'].tolist())
  # 100 draws from a stream that cycles over 10 examples: each drawn about
  # 10 times, the buffer holding back at most 4.
  assert set(counts) == set(range(10))
  assert all(6 <= c <= 14 for c in counts.values()), counts


def test_shuffle_buffer_is_a_function_of_the_seed():
  same = [b['label'].tolist() for b in _draw(1)]
  assert same == [b['label'].tolist() for b in _draw(1)]
  assert same != [b['label'].tolist() for b in _draw(2)]
  # Shuffled: not the stream's own order.
  assert sum(same, []) != [i % 10 for i in range(100)]
