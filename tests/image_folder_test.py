"""Tests for image_folder.py: listing, checking and decoding image folders."""

import concurrent.futures
import os
import re
import threading

import numpy as np
from PIL import Image
import pytest

import conftest
import image_folder
import data_sources


@pytest.fixture
def folder(tmp_path):
  return conftest.make_image_folder(str(tmp_path / 'images'))


def test_classes_are_sorted_folder_names_and_labels_follow(folder):
  splits, names = image_folder.scan(folder)
  assert names == ['cat', 'dog', 'fox']
  assert set(splits) == {'train', 'test'}
  train = splits['train']
  assert len(train) == 24 and len(splits['test']) == 9
  np.testing.assert_array_equal(train.labels, np.repeat([0, 1, 2], 8))
  assert all(f'/train/{names[l]}/' in os.fsdecode(p)
             for p, l in zip(train.paths, train.labels))


def test_size_defaults_to_the_common_size_channels_to_the_first_image(
    folder):
  splits, _ = image_folder.scan(folder)
  assert splits['train'].image_shape == (12, 10, 3)
  images, labels = splits['train'].get(np.array([0, 9]))
  assert images.shape == (2, 12, 10, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, [0, 1])
  # The class band survives decoding (PNG is lossless).
  assert (images[0, 0:2, :, 0] == 255).all()


def test_mixed_sizes_and_grey_are_converted(folder):
  Image.new('L', (40, 30), 128).save(os.path.join(folder, 'train', 'dog',
                                                  'grey_big.png'))
  splits, _ = image_folder.scan(folder, image_size=16)
  train = splits['train']
  index = [os.fsdecode(p) for p in train.paths].index(
      os.path.join(folder, 'train', 'dog', 'grey_big.png'))
  image, label = train.get(np.array([index]))
  assert image.shape == (1, 16, 16, 3) and label[0] == 1
  assert (image == 128).all()  # Grey made RGB: every channel the same.
  grey, _ = image_folder.scan(folder, channels=1)
  assert grey['train'].get(np.array([0]))[0].shape == (1, 12, 10, 1)


def test_first_grey_image_makes_the_set_grey(tmp_path):
  folder = str(tmp_path / 'd')
  for split in ('train', 'test'):
    os.makedirs(os.path.join(folder, split, 'a'))
    Image.new('L', (9, 11), 9).save(os.path.join(folder, split, 'a',
                                                 '0.png'))
  splits, _ = image_folder.scan(folder)
  assert splits['train'].image_shape == (11, 9, 1)


def test_unreadable_files_are_named_before_training(folder):
  bad = os.path.join(folder, 'train', 'cat', 'broken.png')
  with open(bad, 'wb') as f:
    f.write(b'\x89PNG but not really')
  empty = os.path.join(folder, 'test', 'dog', 'empty.jpg')
  open(empty, 'wb').close()
  with pytest.raises(image_folder.BadImagesError) as e:
    image_folder.scan(folder)
  message = str(e.value)
  assert '\n' not in message and '2 unreadable image file(s)' in message
  assert bad in message and empty in message and 'skip_bad_images' in message


def test_skip_bad_images_leaves_them_out(folder):
  with open(os.path.join(folder, 'train', 'cat', 'broken.png'), 'wb') as f:
    f.write(b'garbage')
  splits, _ = image_folder.scan(folder, skip_bad_images=True)
  assert len(splits['train']) == 24
  assert not any(b'broken' in p for p in splits['train'].paths)


def scan_as_processes(folders, count=2, **kwargs):
  """scan() in `count` threads that stand for processes, exchanging arrays
  through a barrier the way process_allgather does; each result or error."""
  barrier, slots = threading.Barrier(count, timeout=60), [None] * count

  def scan(index):
    def allgather(array):
      slots[index] = np.asarray(array)
      barrier.wait()
      gathered = np.stack(slots)
      barrier.wait()
      return gathered
    try:
      return image_folder.scan(folders[index], processes=image_folder.Processes(
          index, count, allgather), **kwargs)
    except image_folder.BadImagesError as e:
      return e

  with concurrent.futures.ThreadPoolExecutor(count) as pool:
    return list(pool.map(scan, range(count)))


def test_processes_share_the_check_and_agree_on_bad_files(folder):
  # Neighbours in the file list: one in each process's share.
  bad = [os.path.join(folder, 'train', 'cat', f'broken_{c}.png') for c in 'ab']
  for path in bad:
    with open(path, 'wb') as f:
      f.write(b'not an image')
  errors = scan_as_processes([folder, folder])
  for error in errors:
    assert isinstance(error, image_folder.BadImagesError)
    assert '2 unreadable image file(s)' in str(error)
    assert all(p in str(error) for p in bad)
    assert 'another process' not in str(error)  # Each reason looked up.
  kept = scan_as_processes([folder, folder], skip_bad_images=True)
  for splits, _ in kept:
    np.testing.assert_array_equal(splits['train'].paths,
                                  kept[0][0]['train'].paths)
    assert len(splits['train']) == 24


def test_processes_that_see_different_folders_are_refused(folder, tmp_path):
  other = conftest.make_image_folder(str(tmp_path / 'other'), num_train=9)
  for error in scan_as_processes([folder, other]):
    assert isinstance(error, image_folder.BadImagesError)
    assert 'list different files' in str(error)


def test_other_files_and_empty_classes(folder):
  with open(os.path.join(folder, 'train', 'cat', 'notes.txt'), 'w') as f:
    f.write('not an image')
  os.makedirs(os.path.join(folder, 'train', 'zebra'))
  splits, names = image_folder.scan(folder)
  assert names == ['cat', 'dog', 'fox', 'zebra']  # Still a class.
  assert len(splits['train']) == 24


def test_test_classes_must_exist_in_train(folder):
  os.makedirs(os.path.join(folder, 'test', 'owl'))
  with pytest.raises(image_folder.BadImagesError, match=r"\['owl'\]"):
    image_folder.scan(folder)


def test_missing_test_folder_is_refused(tmp_path):
  folder = conftest.make_image_folder(str(tmp_path / 'd'))
  os.rename(os.path.join(folder, 'test'), os.path.join(folder, 'other'))
  with pytest.raises(image_folder.BadImagesError, match='no test/ folder'):
    image_folder.scan(folder)


@pytest.mark.parametrize('loading', ['memory', 'stream'])
def test_load_dataset_reads_folders_in_memory_or_streamed(folder, loading):
  dataset = data_sources.load_dataset('custom', folder, loading=loading)
  assert data_sources.in_memory(dataset.train) == (loading == 'memory')
  assert dataset.class_names == ['cat', 'dog', 'fox']
  assert dataset.source.startswith(f'folder:{folder}')
  reference = data_sources.load_dataset('custom', folder, loading='memory')
  indices = np.array([3, 0, 23, 11])
  for a, b in zip(dataset.train.get(indices), reference.train.get(indices)):
    np.testing.assert_array_equal(a, b)
  assert (data_sources.fingerprint(dataset)
          == data_sources.fingerprint(reference))


def test_validation_folder_is_the_validation_split(tmp_path):
  folder = conftest.make_image_folder(str(tmp_path / 'd'), validation=2)
  dataset = data_sources.load_dataset('custom', folder)
  assert len(dataset.validation) == 6
  with pytest.raises(data_sources.DataError, match='validation split '
                     'already'):
    data_sources.load_dataset('custom', folder, validation_fraction=0.1)


def _damaged(path, keep=0.5):
  """Cuts the image file at `path` to `keep` of its bytes: the header stays
  readable, the pixel data does not."""
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:int(len(data) * keep)])


@pytest.mark.parametrize('name', ['001.png', '003.jpg'])
def test_a_damaged_image_body_is_named_before_training(folder, name):
  path = os.path.join(folder, 'train', 'dog', name)
  Image.fromarray(np.random.default_rng(0).integers(
      0, 256, (64, 64, 3), np.uint8)).save(path)  # Enough body to cut.
  _damaged(path)
  with Image.open(path) as image:
    assert image.size == (64, 64)  # The header alone passes.
  with pytest.raises(image_folder.BadImagesError) as e:
    image_folder.scan(folder)
  message = str(e.value)
  assert '\n' not in message
  assert f'1 unreadable image file(s) under {folder}: {path} (' in message
  assert 'truncated' in message


def test_skipped_damaged_images_never_reach_a_streamed_batch(folder, caplog):
  path = os.path.join(folder, 'train', 'fox', '000.png')
  _damaged(path, keep=0.9)
  caplog.set_level('INFO')
  dataset = data_sources.load_dataset('custom', folder, loading='stream',
                                      skip_bad_images=True)
  assert len(dataset.train) == 23
  images, _ = dataset.train.get(np.arange(23))  # Decodes every kept file.
  assert images.shape == (23, 12, 10, 3)
  assert f'Left out 1 unreadable image file(s) under {folder}' in caplog.text


def test_long_checks_and_decodes_say_how_far_along_they_are(folder, caplog,
                                                            monkeypatch):
  monkeypatch.setattr(image_folder, 'PROGRESS_SECONDS', 0.0)
  caplog.set_level('INFO')
  data_sources.load_dataset('custom', folder, loading='memory')
  lines = [r.getMessage() for r in caplog.records]
  check = f'Checking image files under {folder} (each decoded in full)'
  decode = (f'Decoding images under {folder} into memory as (12, 10, 3) '
            f'(0.0 MiB)')
  for what in (check, decode):
    assert f'{what}: 33 files' in lines
    assert any(re.fullmatch(f'{re.escape(what)}: ' + r'\d+ of 33 files '
                            r'\(\d+%\) in \d+ s, about \d+ s left', l)
               for l in lines)
    assert any(re.fullmatch(f'{re.escape(what)}: 33 files done in '
                            r'\d+\.\d s', l) for l in lines)


def test_symlink_loops_are_not_followed(folder, tmp_path, caplog,
                                        monkeypatch):
  cat = os.path.join(folder, 'train', 'cat')
  os.symlink(cat, os.path.join(cat, 'again'))  # The folder itself.
  os.symlink(folder, os.path.join(cat, 'up'))  # The whole data folder.
  os.symlink(os.path.join(folder, 'train'), os.path.join(cat, 'z_train'))
  # A link to a folder elsewhere is followed: its images join the class.
  more = tmp_path / 'more'
  more.mkdir()
  Image.new('RGB', (10, 12)).save(str(more / 'x.png'))
  os.symlink(str(more), os.path.join(cat, 'more'))
  os.symlink(str(more), os.path.join(cat, 'more_again'))  # Once only.
  listed, calls = os.scandir, []

  def counted(path):  # A walk that follows loops fails here, not hangs.
    calls.append(path)
    assert len(calls) < 200, f'walked {path}'
    return listed(path)

  monkeypatch.setattr(os, 'scandir', counted)
  splits, _ = image_folder.scan(folder)
  files = [os.path.relpath(os.fsdecode(p), cat)
           for p in splits['train'].paths[splits['train'].labels == 0]]
  assert files == [f'{i:03d}.{"jpg" if i % 4 == 3 else "png"}'
                   for i in range(8)] + ['more/x.png']
  assert len(splits['train']) == 25
  assert 'a loop' in caplog.text and 'walked already' in caplog.text


def _folder_of_sizes(path, sizes):
  """path/{train,test}/a/NNN.png, one image of each (width, height)."""
  for split in ('train', 'test'):
    os.makedirs(os.path.join(path, split, 'a'))
    for i, size in enumerate(sizes):
      Image.new('RGB', size, (i, 0, 0)).save(
          os.path.join(path, split, 'a', f'{i:03d}.png'))
  return path


@pytest.mark.parametrize('odd,sizes', [((1, 1), '1x1 to 10x12'),
                                       ((10000, 10), '10x12 to 10000x10')])
def test_an_odd_first_image_does_not_set_the_size(tmp_path, odd, sizes,
                                                  caplog):
  folder = _folder_of_sizes(str(tmp_path / 'd'), [odd] + [(10, 12)] * 3)
  caplog.set_level('INFO')
  splits, _ = image_folder.scan(folder)
  assert splits['train'].image_shape == (12, 10, 3)
  assert splits['train'].get(np.array([0]))[0].shape == (1, 12, 10, 3)
  assert (f'images are made 10x12 (width x height), the size of 6 of 8; '
          f'sizes range from {sizes}') in caplog.text
  assert ('2 of 8 images are not 5:6 (width:height); each is resized to '
          '10x12') in caplog.text


@pytest.mark.parametrize('size', [(4, 4), (100, 9)])
def test_a_degenerate_common_size_asks_for_image_size(tmp_path, size):
  folder = _folder_of_sizes(str(tmp_path / 'd'), [size] * 3)
  with pytest.raises(image_folder.BadImagesError) as e:
    image_folder.scan(folder)
  message = str(e.value)
  assert '\n' not in message
  assert (f'image_size=0 takes the size most images have, {size[0]}x'
          f'{size[1]} (width x height; e.g. {folder}/train/a/000.png)'
          in message)
  assert 'set --config.image_size' in message
  splits, _ = image_folder.scan(folder, image_size=16)  # Then it is fine.
  assert splits['train'].image_shape == (16, 16, 3)


def test_sizes_without_a_common_one_ask_for_image_size(tmp_path):
  folder = _folder_of_sizes(str(tmp_path / 'd'),
                            [(10 + i, 20) for i in range(4)])
  with pytest.raises(image_folder.BadImagesError,
                     match=r'the 8 images have 4 sizes, from 10x20 to 13x20 '
                           r'\(width x height\), and none is shared by half '
                           r'of them; set --config.image_size'):
    image_folder.scan(folder)


def test_squashed_images_are_counted_in_one_warning(folder, caplog):
  image_folder.scan(folder)
  assert 'squashed' not in caplog.text  # All 10x12, kept so.
  Image.new('RGB', (16, 16)).save(os.path.join(folder, 'test', 'cat',
                                               'square.png'))
  image_folder.scan(folder, image_size=16)
  warnings = [r.getMessage() for r in caplog.records if 'squashed' in
              r.getMessage()]
  assert warnings == [
      '33 of 34 images are not square; each is resized to 16x16 (width x '
      'height) without keeping its aspect ratio: squashed, not cropped or '
      'padded']


def test_processes_carve_a_flat_folder_alike(tmp_path):
  folder = os.path.join(conftest.make_image_folder(
      str(tmp_path / 'd'), num_train=7, num_test=0), 'train')
  Image.new('RGB', (10, 12)).save(os.path.join(folder, 'dog', 'blank.png'))
  _damaged(os.path.join(folder, 'dog', '002.png'))
  alone, _ = image_folder.scan(folder, skip_bad_images=True)
  for splits, names in scan_as_processes([folder] * 3, count=3,
                                         skip_bad_images=True):
    assert names == ['cat', 'dog', 'fox']
    for split in ('train', 'test'):
      np.testing.assert_array_equal(splits[split].paths, alone[split].paths)
  np.testing.assert_array_equal(np.bincount(alone['test'].labels), [1, 1, 1])
  assert len(alone['train']) == 18


def test_test_fraction_is_unused_for_train_and_test_folders(folder):
  dataset = data_sources.load_dataset('custom', folder, test_fraction=0.0)
  assert len(dataset.test) == 9 and dataset.source.startswith('folder:')


def test_a_crop_pct_below_1_resizes_the_shorter_side_and_centre_crops(
    tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pixels = np.zeros((30, 40, 3), np.uint8)
  pixels[:, :, 0] = np.arange(40, dtype=np.uint8)[None] * 6  # A ramp in x.
  path = str(tmp_path / 'wide.png')
  Image.fromarray(pixels).save(path)
  image = Image.open(path).resize((20, 15), Image.BILINEAR)  # Short side 15.
  expected = np.asarray(image)[1:13, 4:16]  # Offsets round((15-12)/2), 4.
  got = image_folder.decode_image(path, 12, 12, 3, crop_pct=0.8)
  np.testing.assert_array_equal(got, expected)
  whole = image_folder.decode_image(path, 12, 12, 3)
  np.testing.assert_array_equal(
      whole, np.asarray(Image.open(path).resize((12, 12), Image.BILINEAR)))


@pytest.mark.parametrize('loading', ['memory', 'stream'])
def test_rrc_keeps_training_images_larger_to_crop_from(tmp_path, loading):
  folder = conftest.make_image_folder(str(tmp_path / 'images'),
                                      size=(30, 40))
  dataset = data_sources.load_dataset(
      'custom', folder, image_size=16, loading=loading, crop_pct=0.8,
      train_crop_pct=0.8, validation_fraction=0.25)
  # The model's input everywhere; the train images kept at 16 / 0.8 = 20,
  # their shorter side resized to 20 and centre-cropped square.
  assert dataset.train.image_shape == (16, 16, 3)
  assert dataset.validation.image_shape == (16, 16, 3)
  images, _ = dataset.train.get(np.arange(2))
  assert images.shape == (2, 20, 20, 3)
  assert dataset.test.get(np.arange(2))[0].shape == (2, 16, 16, 3)
  path = os.path.join(folder, 'train', 'cat', '000.png')
  first = data_sources.load_dataset('custom', folder, image_size=16,
                                    loading=loading, crop_pct=0.8,
                                    train_crop_pct=0.8).train
  np.testing.assert_array_equal(
      first.get(np.arange(1))[0][0],
      image_folder.decode_image(path, 20, 20, 3, keep_aspect=True))
  # At most twice the size; and nothing changes without train_crop_pct.
  assert data_sources.load_dataset(
      'custom', folder, image_size=16, loading=loading, crop_pct=0.3,
      train_crop_pct=0.3).train.get(np.arange(1))[0].shape == (1, 32, 32, 3)
  assert data_sources.load_dataset(
      'custom', folder, image_size=16, loading=loading, crop_pct=0.8
  ).train.get(np.arange(1))[0].shape == (1, 16, 16, 3)


def test_train_crop_pct_follows_rrc_and_eval_crop_pct():
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.image_size, config.eval_crop_pct = 64, 0.875
  assert data_sources.train_crop_pct(config) == 1.0  # No rrc.
  config.augment = 'rrc,random_erasing'
  assert data_sources.train_crop_pct(config) == 0.875
  config.eval_crop_pct = 1.0
  assert data_sources.train_crop_pct(config) == 1.0
