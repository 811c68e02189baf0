"""Tests for data_sources.py: IDX files, tfds sets, the validation hold-out
and the fingerprint."""

import os
import struct

import numpy as np
import pytest

import conftest
import data_sources
import image_folder
import input_pipeline


@pytest.mark.parametrize('gz', [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
  data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  path = str(tmp_path / ('x.idx' + ('.gz' if gz else '')))
  conftest.write_idx(path, data)
  np.testing.assert_array_equal(data_sources.read_idx(path), data)


def test_read_idx_rejects_bad_magic(tmp_path):
  path = str(tmp_path / 'bad')
  conftest.write_idx(path, np.zeros((2, 2), np.uint8),
                     magic=struct.pack('>HBB', 0, 0x0D, 2))  # float32 code.
  with pytest.raises(data_sources.DataError, match='bad IDX magic'):
    data_sources.read_idx(path)


def test_read_idx_rejects_truncated_file(tmp_path):
  path = str(tmp_path / 'trunc')
  conftest.write_idx(path, np.zeros((4, 5, 5), np.uint8))
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - 7)
  with pytest.raises(data_sources.DataError, match='declares shape'):
    data_sources.read_idx(path)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
  path = str(tmp_path / 'x.gz')
  with open(path, 'wb') as f:
    f.write(b'not gzip at all')
  with pytest.raises(data_sources.DataError, match='cannot read'):
    data_sources.read_idx(path)


def test_label_count_must_match_image_count(tmp_path):
  path = conftest.make_idx_dir(str(tmp_path / 'd'))
  conftest.write_idx(os.path.join(path, 't10k-labels-idx1-ubyte'),
                     np.zeros(19, np.uint8))
  with pytest.raises(data_sources.DataError, match='20 images but .* 19'):
    data_sources.load_dataset('mnist', path)


def test_missing_file_is_named(tmp_path):
  path = conftest.make_idx_dir(str(tmp_path / 'd'))
  os.remove(os.path.join(path, 'train-labels-idx1-ubyte'))
  with pytest.raises(data_sources.DataError,
                     match='missing train-labels-idx1-ubyte'):
    data_sources.load_dataset('mnist', path)


def test_missing_data_dir_is_an_error(tmp_path):
  with pytest.raises(data_sources.DataError, match='does not exist'):
    data_sources.load_dataset('mnist', str(tmp_path / 'nope'))


@pytest.mark.parametrize('gz', [False, True])
def test_load_idx_dir_shapes_and_range(tmp_path, gz):
  path = conftest.make_idx_dir(str(tmp_path / 'd'), gz=gz)
  ds = data_sources.load_dataset('fashion_mnist', path)
  assert ds.train.images.shape == (64, 28, 28, 1)
  assert ds.test.images.shape == (20, 28, 28, 1)
  assert ds.train.images.dtype == np.uint8
  assert ds.train.labels.dtype == np.int32
  assert ds.train.images.max() == 255  # The bright band of each image.
  assert ds.class_names[0] == 'T-shirt/top'


def test_tfds_offline_fails_fast_with_offline_route(monkeypatch, tmp_path):
  monkeypatch.setattr(data_sources, '_network_reachable',
                      lambda *a, **k: False)
  # As for tfds's default folder (data_dir ''), where a set is downloaded.
  builder = data_sources._tfds_builder('mnist', str(tmp_path))
  with pytest.raises(data_sources.DataError, match='Offline route'):
    data_sources._prepare(builder, 'mnist', None)


def test_unknown_tfds_name_is_refused():
  with pytest.raises(data_sources.DataError, match="unknown dataset 'nope'"):
    data_sources.load_dataset('nope')


def _assert_names_the_layouts(message):
  assert '\n' not in message
  for layout in ('DATA/train/<class>/<image> with DATA/test/<class>/<image>',
                 'DATA/<class>/<image>', 'MNIST-format IDX files',
                 'a tfds data_dir'):
    assert layout in message, layout


@pytest.mark.parametrize('name', ['mnist', 'nope'])
@pytest.mark.parametrize('content,found', [
    ({}, 'it holds no folders'),
    ({'a.jpg': b'x'}, 'its images are not in class folders'),
    ({'cat/1.png': b'x', 'notes/a.txt': b'x'},
     'its folders notes hold no image files'),
])
def test_a_folder_of_no_layout_names_the_accepted_ones(tmp_path, monkeypatch,
                                                       name, content, found):
  # The layouts, not the network, are what is wrong with such a folder.
  monkeypatch.setattr(data_sources, '_network_reachable',
                      lambda *a, **k: False)
  for path, data in content.items():
    os.makedirs(os.path.dirname(tmp_path / path), exist_ok=True)
    (tmp_path / path).write_bytes(data)
  assert data_sources.source_kind(str(tmp_path)) == 'tfds'
  with pytest.raises(data_sources.DataError) as e:
    data_sources.load_dataset(name, str(tmp_path))
  message = str(e.value)
  assert message.startswith(f'data_dir {tmp_path} is none of the accepted '
                            f'layouts ({found}; no IDX files; ')
  _assert_names_the_layouts(message)


def test_a_missing_data_dir_names_the_accepted_layouts(tmp_path):
  with pytest.raises(data_sources.DataError) as e:
    data_sources.load_dataset('mnist', str(tmp_path / 'nope'))
  _assert_names_the_layouts(str(e.value))


def test_dataset_options_pass_the_hold_out_keys(idx_dir):
  config = conftest.tiny_config(idx_dir, test_fraction=0.3, split_seed=7)
  options = data_sources.dataset_options(config)
  assert (options['test_fraction'], options['split_seed']) == (0.3, 7)
  assert 'seed' not in options  # The training seed picks no examples.


def test_validation_is_carved_disjoint_and_by_seed():
  split = conftest.numbered_split(100)
  train, validation = data_sources.carve_validation(split, 0.2, seed=1)
  assert len(train) == 80 and len(validation) == 20
  held = set(validation.images.ravel().tolist())
  kept = set(train.images.ravel().tolist())
  assert not held & kept and held | kept == set(range(100))
  again = data_sources.carve_validation(split, 0.2, seed=1)[1]
  np.testing.assert_array_equal(again.images, validation.images)
  other = data_sources.carve_validation(split, 0.2, seed=2)[1]
  assert set(other.images.ravel().tolist()) != held
  # A streamed split is carved by index, to the same examples.
  _, streamed = data_sources.carve_validation(conftest.streamed(split), 0.2, 1)
  np.testing.assert_array_equal(streamed.get(np.arange(20))[0],
                                validation.images)


@pytest.mark.parametrize('fraction', [0.001, 0.9999])
def test_validation_fraction_must_leave_both_sides(fraction):
  with pytest.raises(data_sources.DataError, match='validation_fraction'):
    data_sources.carve_validation(conftest.numbered_split(100), fraction, 0)


def test_validation_fraction_changes_the_fingerprint(idx_dir):
  plain = data_sources.load_dataset('mnist', idx_dir)
  carved = data_sources.load_dataset('mnist', idx_dir,
                                       validation_fraction=0.25)
  assert len(carved.train) == 48 and len(carved.validation) == 16
  a, b = (data_sources.fingerprint(d) for d in (plain, carved))
  assert b['validation_examples'] == 16 and a != b


def _tiny_tfds_builder():
  """A 3-class tfds set defined here, so it can be prepared offline."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class TinyShapes(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.
                                   FeaturesDict({
                                       'image': tfds.features.Image(
                                           shape=(8, 8, 1)),
                                       'label': tfds.features.ClassLabel(
                                           names=['a', 'b', 'c'])}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples(40, 0),
              'test': self._generate_examples(12, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield i, {'image': rng.integers(0, 256, (8, 8, 1), dtype=np.uint8),
                  'label': i % 3}

  return TinyShapes


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  _tiny_tfds_builder()(data_dir=path, file_format='array_record'
                       ).download_and_prepare()
  return path


def test_tfds_set_is_read_by_random_access(tfds_dir):
  streamed = data_sources.load_dataset('tiny_shapes', tfds_dir,
                                         loading='stream')
  memory = data_sources.load_dataset('tiny_shapes', tfds_dir,
                                       loading='memory')
  assert isinstance(streamed.train, data_sources.TfdsSplit)
  assert data_sources.in_memory(memory.train)
  assert len(streamed.train) == 40 and streamed.class_names == ['a', 'b', 'c']
  assert streamed.train.image_shape == (8, 8, 1)
  indices = np.array([7, 0, 39])
  for a, b in zip(streamed.train.get(indices), memory.train.get(indices)):
    np.testing.assert_array_equal(a, b)
  # Two processes read disjoint halves that make up the global batch.
  halves = [next(input_pipeline.train_batches(streamed.train, 8, 0, 3, 1, p, 2,
                                              threads=2)) for p in range(2)]
  whole = next(input_pipeline.train_batches(memory.train, 8, 0, 3, 1))
  np.testing.assert_array_equal(
      np.concatenate([h[0] for h in halves]), whole[0])


def test_an_empty_idx_split_is_named(tmp_path):
  path = conftest.make_idx_dir(str(tmp_path / 'idx'))
  conftest.write_idx(os.path.join(path, 't10k-images-idx3-ubyte'),
                     np.zeros((0, 28, 28), np.uint8))
  conftest.write_idx(os.path.join(path, 't10k-labels-idx1-ubyte'),
                     np.zeros((0,), np.uint8))
  with pytest.raises(data_sources.DataError,
                     match='t10k-images-idx3-ubyte holds no images'):
    data_sources.load_dataset('mnist', path)


def test_process_0_tells_the_others_of_any_failure_to_prepare(monkeypatch):
  told = []

  def allgather(status):  # Process 0's status first, then the others'.
    told.append(int(status))
    return np.array([int(status), 1])

  def broken(name, data_dir):
    raise RuntimeError('disk quota exceeded')  # Not a DataError.

  monkeypatch.setattr(data_sources, '_tfds_builder', broken)
  with pytest.raises(RuntimeError, match='quota'):
    data_sources.load_tfds('mnist', None, processes=image_folder.Processes(
        0, 2, allgather))
  assert told == [0]  # The failure was told before it was raised.
  with pytest.raises(data_sources.DataError,
                     match='process 0 could not prepare'):
    data_sources.load_tfds('mnist', None, processes=image_folder.Processes(
        1, 2, lambda status: np.array([0, int(status)])))


# Three runs (about 14 s): make test-all and CI.
@pytest.mark.slow
def test_rrc_crops_from_larger_train_images_alike_in_every_route(tmp_path):
  """rrc with eval_crop_pct < 1: the train images are kept 10x10 for a
  model input of 8x8; memory, streamed and on-device data give the same
  run, the validation split carved from them is centre-cropped for eval."""
  import json  # pylint: disable=g-import-not-at-top
  import train  # pylint: disable=g-import-not-at-top
  folder = conftest.make_image_folder(str(tmp_path / 'images'),
                                      num_train=4, num_test=2, size=(12, 10))
  summaries = []
  for route in ({'data_loading': 'memory'}, {'data_loading': 'stream'},
                {'data_loading': 'memory', 'data_on_device': True}):
    workdir = str(tmp_path / f'w{len(summaries)}')
    config = conftest.tiny_config(
        folder, dataset='custom', model='mlp', model_kwargs={'hidden': 8},
        batch_size=4, eval_batch_size=4, num_train_steps=3, image_size=8,
        eval_crop_pct=0.8, augment='rrc,crop_flip', validation_fraction=0.25,
        **route)
    stored = data_sources.load_dataset(**data_sources.dataset_options(
        config)).train.get(np.arange(1))[0]
    assert stored.shape == (1, 10, 10, 3)
    train.train_and_evaluate(config, workdir)
    info = json.load(open(os.path.join(workdir, 'dataset.json')))
    assert info['image_shape'] == [8, 8, 3]
    summaries.append(json.load(open(os.path.join(workdir, 'summary.json'))))
  for summary in summaries[1:]:
    for key in ('train_loss', 'validation_loss', 'test_loss'):
      assert summary[key] == summaries[0][key], key
