"""Tests for bench/benchmark.py: its dispatch, its children and its lines.

In-process and fast: nothing here times or trains anything.
"""

import ast
import os
import sys

import numpy as np
import pytest

import conftest

BENCH = os.path.join(conftest.ROOT, 'bench')
sys.path.insert(0, BENCH)
# pylint: disable=g-import-not-at-top,wrong-import-position
import benchmark
import throughput
import transfer
# pylint: enable=g-import-not-at-top,wrong-import-position

# bench/ files that are no mode of benchmark.py.
NOT_MODES = {'benchmark', 'common', 'windows', 'contenders',
             'profile_layers'}


def _bench_files():
  return sorted(f for f in os.listdir(BENCH) if f.endswith('.py'))


def _tree(name):
  with open(os.path.join(BENCH, name)) as f:
    return ast.parse(f.read(), name)


def test_mode_flag_accepts_every_mode_and_child_mode_only():
  parser = benchmark.create_parser()
  for mode in [*benchmark.MODES, *benchmark.CHILD_MODES]:
    assert parser.parse_args([f'--mode={mode}']).mode == mode
  assert parser.parse_args([]).mode == 'throughput'
  with pytest.raises(SystemExit):
    parser.parse_args(['--mode=benchmark'])


def test_every_mode_file_is_dispatched():
  modes = {f[:-3] for f in _bench_files()} - NOT_MODES
  dispatched = {fn.__module__ for fn in benchmark.MODES.values()}
  assert dispatched == modes


def test_children_are_started_with_child_modes():
  # common.child(MODE, ...) and common.benchmark_command(MODE, ...) with a
  # literal MODE, in every file: a renamed child mode fails here, not
  # minutes into a run.
  started = set()
  for name in _bench_files():
    for node in ast.walk(_tree(name)):
      if not isinstance(node, ast.Call):
        continue
      func = getattr(node.func, 'attr', getattr(node.func, 'id', None))
      if (func in ('child', 'benchmark_command') and node.args and
          isinstance(node.args[0], ast.Constant)):
        started.add(node.args[0].value)
  assert started == set(benchmark.CHILD_MODES)


def test_nothing_in_bench_imports_the_training_loop():
  for name in _bench_files():
    for node in ast.walk(_tree(name)):
      if isinstance(node, ast.Import):
        assert 'train' not in {a.name for a in node.names}, name
      elif isinstance(node, ast.ImportFrom):
        assert node.module != 'train', name


def test_every_bench_file_says_what_it_measures():
  for name in _bench_files():
    assert ast.get_docstring(_tree(name)), name


def test_summary_lines_give_ratios_and_seconds_only():
  rows = [{'contender': 'trainer b32', 'train_images_per_s': 300.0},
          {'contender': 'trainer b128', 'train_images_per_s': 400.0},
          {'contender': 'torch b32', 'train_images_per_s': 200.0}]
  median = {('reference', 32): 100.0, ('trainer', 32): 300.0}
  assert throughput.summary_lines(rows, median, 100.0, {'trainer': 4.31}) == [
      'best trainer (trainer b128) / best torch (torch b32): 2.00x',
      'trainer b32 / reference b32: 3.00x',
      'trainer process start to first step: 4.3 s']


def test_transfer_tasks_pick_relabel_and_repeat(tmp_path):
  labels = np.array([5, 0, 7, 5, 9, 5, 7, 0], np.uint8)
  images = np.arange(8, dtype=np.uint8)[:, None, None] * np.ones(
      (1, 2, 3), np.uint8)
  picked, relabelled = transfer.select_classes(images, labels, (5, 7),
                                               per_class=2)
  # The first two of each class in file order, relabelled 5 -> 0, 7 -> 1.
  np.testing.assert_array_equal(picked[:, 0, 0], [0, 2, 3, 6])
  np.testing.assert_array_equal(relabelled, [0, 1, 0, 1])
  with pytest.raises(ValueError, match='fewer than 3'):
    transfer.select_classes(images, labels, (7,), per_class=3)
  assert transfer.repeats(50, 3200) == 64
  assert transfer.repeats(250, 3200) == 13
  assert transfer.repeats(5000, 3200) == 1
  import data_sources  # pylint: disable=g-import-not-at-top
  folder = transfer.write_idx_folder(str(tmp_path), (picked, relabelled),
                                     (images[:3], labels[:3] % 2))
  data = data_sources.load_idx('custom', folder)
  np.testing.assert_array_equal(data.train.images[..., 0], picked)
  np.testing.assert_array_equal(data.train.labels, relabelled)
  assert data.num_classes == 2 and len(data.test) == 3
