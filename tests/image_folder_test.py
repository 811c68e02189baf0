"""Tests for image_folder.py: listing, checking and decoding image folders."""

import concurrent.futures
import os
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


def test_size_and_channels_default_to_the_first_training_image(folder):
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
    Image.new('L', (5, 7), 9).save(os.path.join(folder, split, 'a', '0.png'))
  splits, _ = image_folder.scan(folder)
  assert splits['train'].image_shape == (7, 5, 1)


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
