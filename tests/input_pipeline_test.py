"""Tests for input_pipeline.py: training order, process slices, eval
batches, streaming, prefetch and the eval batch size."""

import numpy as np
import pytest

import conftest
import input_pipeline


def test_train_order_depends_only_on_seed_and_epoch():
  split = conftest.numbered_split(100)
  run1 = [b[0].ravel() for b in input_pipeline.train_batches(split, 8, 3, 0,
                                                             30)]
  run2 = [b[0].ravel() for b in input_pipeline.train_batches(split, 8, 3, 0,
                                                             30)]
  np.testing.assert_array_equal(run1, run2)
  # Starting at step 17 gives the same batches as step 17 of a full run.
  resumed = [b[0].ravel() for b in input_pipeline.train_batches(split, 8, 3,
                                                                17, 13)]
  np.testing.assert_array_equal(run1[17:], resumed)
  # Each epoch (12 full batches of 8) visits distinct examples.
  epoch0 = np.concatenate(run1[:12])
  assert len(set(epoch0.tolist())) == 96
  # Epochs differ in order; seeds differ in order.
  assert not np.array_equal(run1[0], run1[12])
  other = next(input_pipeline.train_batches(split, 8, 4, 0, 1))[0].ravel()
  assert not np.array_equal(run1[0], other)


def test_process_slices_concatenate_to_the_global_batch():
  split = conftest.numbered_split(100)
  whole = list(input_pipeline.train_batches(split, 8, 0, 5, 3))
  parts = [list(input_pipeline.train_batches(split, 8, 0, 5, 3, p, 2))
           for p in range(2)]
  for step in range(3):
    np.testing.assert_array_equal(
        np.concatenate([parts[0][step][0], parts[1][step][0]]),
        whole[step][0])


def test_eval_covers_every_example_exactly_once():
  split = conftest.numbered_split(23)
  seen, shapes = [], set()
  for images, _, mask in input_pipeline.eval_batches(split, 10):
    shapes.add(images.shape)
    seen.extend(images.ravel()[mask].tolist())
  assert shapes == {(10, 1, 1, 1)}
  assert sorted(seen) == list(range(23))


def test_streamed_batches_equal_in_memory_batches():
  split = conftest.numbered_split(100)
  memory = list(input_pipeline.train_batches(split, 8, 3, 5, 20))
  streamed = list(input_pipeline.train_batches(conftest.streamed(split), 8, 3, 5, 20,
                                               threads=3))
  assert len(streamed) == 20
  for (a, la), (b, lb) in zip(memory, streamed):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)


@pytest.mark.parametrize('processes', [1, 2])
def test_streamed_eval_covers_every_example_once(processes):
  split = conftest.streamed(conftest.numbered_split(23))
  seen = []
  for process in range(processes):
    for images, _, mask in input_pipeline.eval_batches(
        split, 10, process, processes, threads=2):
      assert images.shape == (10 // processes, 1, 1, 1)
      seen.extend(images.ravel()[mask].tolist())
  assert sorted(seen) == list(range(23))


def test_prefetch_keeps_order_and_runs_ahead():
  put_log = []

  def put(x):
    put_log.append(x)
    return (x * 10,)

  out = []
  for (y,) in input_pipeline.prefetch(((i,) for i in range(5)), put, size=2):
    out.append(y)
    # When batch i is used, batches up to i + 2 have been sent.
    assert len(put_log) == min(5, len(out) + 2)
  assert out == [0, 10, 20, 30, 40]


def test_eval_batch_size_is_cut_to_the_largest_evaluated_split():
  assert input_pipeline.fit_eval_batch_size(1000, [50], 1) == 50
  assert input_pipeline.fit_eval_batch_size(1000, [50], 4) == 52
  assert input_pipeline.fit_eval_batch_size(20, [50], 4) == 20
  # Training and eval mode cut it to the same size: the largest split.
  assert input_pipeline.fit_eval_batch_size(1000, [30, 50], 1) == 50


def test_balanced_sampling_draws_every_class_alike_from_seed_and_step():
  labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
  indices = input_pipeline.train_batch_indices(1000, 100, seed=3,
                                               balanced_labels=labels)
  drawn = np.concatenate([indices(i) for i in range(30)])  # 3 epochs.
  shares = np.bincount(labels[drawn], minlength=3) / len(drawn)
  np.testing.assert_allclose(shares, 1 / 3, atol=0.03)
  again = input_pipeline.train_batch_indices(1000, 100, seed=3, start_step=17,
                                             balanced_labels=labels)
  np.testing.assert_array_equal(again(0), indices(17))  # As after a resume.
  halves = [input_pipeline.train_batch_indices(
      1000, 100, seed=3, process_index=p, process_count=2,
      balanced_labels=labels)(5) for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves), indices(5))
  other = input_pipeline.train_batch_indices(1000, 100, seed=4,
                                             balanced_labels=labels)
  assert not np.array_equal(other(0), indices(0))
