"""Tests for input_pipeline.py: IDX reading, batch order, eval coverage."""

import os
import struct

import numpy as np
import pytest

import conftest
import input_pipeline


@pytest.mark.parametrize('gz', [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
  data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  path = str(tmp_path / ('x.idx' + ('.gz' if gz else '')))
  conftest.write_idx(path, data)
  np.testing.assert_array_equal(input_pipeline.read_idx(path), data)


def test_read_idx_rejects_bad_magic(tmp_path):
  path = str(tmp_path / 'bad')
  conftest.write_idx(path, np.zeros((2, 2), np.uint8),
                     magic=struct.pack('>HBB', 0, 0x0D, 2))  # float32 code.
  with pytest.raises(input_pipeline.DataError, match='bad IDX magic'):
    input_pipeline.read_idx(path)


def test_read_idx_rejects_truncated_file(tmp_path):
  path = str(tmp_path / 'trunc')
  conftest.write_idx(path, np.zeros((4, 5, 5), np.uint8))
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - 7)
  with pytest.raises(input_pipeline.DataError, match='declares shape'):
    input_pipeline.read_idx(path)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
  path = str(tmp_path / 'x.gz')
  with open(path, 'wb') as f:
    f.write(b'not gzip at all')
  with pytest.raises(input_pipeline.DataError, match='cannot read'):
    input_pipeline.read_idx(path)


def test_label_count_must_match_image_count(tmp_path):
  path = conftest.make_idx_dir(str(tmp_path / 'd'))
  conftest.write_idx(os.path.join(path, 't10k-labels-idx1-ubyte'),
                     np.zeros(19, np.uint8))
  with pytest.raises(input_pipeline.DataError, match='20 images but .* 19'):
    input_pipeline.load_dataset('mnist', path)


def test_missing_file_is_named(tmp_path):
  path = conftest.make_idx_dir(str(tmp_path / 'd'))
  os.remove(os.path.join(path, 'train-labels-idx1-ubyte'))
  with pytest.raises(input_pipeline.DataError,
                     match='missing train-labels-idx1-ubyte'):
    input_pipeline.load_dataset('mnist', path)


def test_missing_data_dir_is_an_error(tmp_path):
  with pytest.raises(input_pipeline.DataError, match='does not exist'):
    input_pipeline.load_dataset('mnist', str(tmp_path / 'nope'))


@pytest.mark.parametrize('gz', [False, True])
def test_load_idx_dir_shapes_and_range(tmp_path, gz):
  path = conftest.make_idx_dir(str(tmp_path / 'd'), gz=gz)
  ds = input_pipeline.load_dataset('fashion_mnist', path)
  assert ds.train.images.shape == (64, 28, 28, 1)
  assert ds.test.images.shape == (20, 28, 28, 1)
  assert ds.train.images.dtype == np.uint8
  assert ds.train.labels.dtype == np.int32
  assert ds.train.images.max() == 255  # The bright band of each image.
  assert ds.class_names[0] == 'T-shirt/top'


def _split(n):
  images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
  return input_pipeline.Split(images=images, labels=np.arange(n) % 10)


def test_train_order_depends_only_on_seed_and_epoch():
  split = _split(100)
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
  split = _split(100)
  whole = list(input_pipeline.train_batches(split, 8, 0, 5, 3))
  parts = [list(input_pipeline.train_batches(split, 8, 0, 5, 3, p, 2))
           for p in range(2)]
  for step in range(3):
    np.testing.assert_array_equal(
        np.concatenate([parts[0][step][0], parts[1][step][0]]),
        whole[step][0])


def test_eval_covers_every_example_exactly_once():
  split = _split(23)
  seen, shapes = [], set()
  for images, _, mask in input_pipeline.eval_batches(split, 10):
    shapes.add(images.shape)
    seen.extend(images.ravel()[mask].tolist())
  assert shapes == {(10, 1, 1, 1)}
  assert sorted(seen) == list(range(23))


def test_tfds_offline_fails_fast_with_offline_route(monkeypatch, tmp_path):
  monkeypatch.setattr(input_pipeline, '_network_reachable',
                      lambda *a, **k: False)
  with pytest.raises(input_pipeline.DataError, match='Offline route'):
    input_pipeline.load_dataset('mnist', str(tmp_path))


def test_unknown_tfds_name_is_refused(tmp_path):
  with pytest.raises(input_pipeline.DataError, match="unknown dataset 'nope'"):
    input_pipeline.load_dataset('nope', str(tmp_path))
