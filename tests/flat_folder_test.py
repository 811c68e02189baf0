"""Tests for flat class folders (data_dir/<class>/<image>): recognised, the
test split carved by class and split_seed, and trained on as the README
says."""

import json
import os
import re
import shlex
import shutil

import numpy as np
import pytest

import cli
from configs import default
import conftest
import data_sources
import image_folder
import train


def make_flat_folder(path, num_images=10, **kwargs):
  """path/<class>/NNN.png|jpg: conftest's train/ folder on its own."""
  root = conftest.make_image_folder(path + '_split', num_train=num_images,
                                    num_test=0, **kwargs)
  os.rename(os.path.join(root, 'train'), path)
  return path


@pytest.fixture
def flat(tmp_path):
  return make_flat_folder(str(tmp_path / 'flat'))


def relative(split, root):
  return [os.path.relpath(os.fsdecode(p), root) for p in split.paths]


def test_a_flat_folder_is_carved_by_class(flat):
  assert data_sources.source_kind(flat) == 'flat'
  # The dataset name (the default, mnist) is unused for image folders.
  dataset = data_sources.load_dataset('mnist', flat, loading='stream')
  assert dataset.class_names == ['cat', 'dog', 'fox']
  assert dataset.source == (f'flat folder:{flat} (test: 0.2 of each class, '
                            f'drawn by split_seed 0; decoded per batch)')
  np.testing.assert_array_equal(np.bincount(dataset.test.labels), [2, 2, 2])
  np.testing.assert_array_equal(np.bincount(dataset.train.labels), [8, 8, 8])
  train_files = relative(dataset.train, flat)
  test_files = relative(dataset.test, flat)
  # Pinned: a resumed run and every process must draw these same files.
  assert test_files == ['cat/000.png', 'cat/009.png', 'dog/000.png',
                        'dog/005.png', 'fox/000.png', 'fox/001.png']
  assert train_files == sorted(set(train_files))  # Listing order kept.
  assert len(set(train_files) | set(test_files)) == 30
  assert dataset.train.image_shape == (12, 10, 3)


def test_the_carve_depends_on_split_seed_and_files_only(flat, tmp_path,
                                                        monkeypatch):
  test_files = relative(image_folder.scan(flat)[0]['test'], flat)
  moved = shutil.copytree(flat, str(tmp_path / 'elsewhere'))
  assert relative(image_folder.scan(moved)[0]['test'], moved) == test_files
  listed = os.scandir

  class Reversed:
    """os.scandir listing in reverse order."""

    def __init__(self, path):
      with listed(path) as entries:
        self.entries = list(entries)[::-1]

    def __enter__(self):
      return iter(self.entries)

    def __exit__(self, *_):
      pass

    def __iter__(self):
      return iter(self.entries)

  monkeypatch.setattr(os, 'scandir', Reversed)
  assert relative(image_folder.scan(flat)[0]['test'], flat) == test_files
  monkeypatch.undo()
  other = relative(image_folder.scan(flat, split_seed=1)[0]['test'], flat)
  assert len(other) == 6 and other != test_files
  half = image_folder.scan(flat, test_fraction=0.5)[0]['test']
  np.testing.assert_array_equal(np.bincount(half.labels), [5, 5, 5])


def test_hold_outs_follow_split_seed_not_seed(flat):
  config = conftest.tiny_config(flat, validation_fraction=0.25)

  def fingerprint(**overrides):
    config.update(overrides)
    dataset = data_sources.load_dataset(**data_sources.dataset_options(config))
    assert len(dataset.validation) == 6
    return data_sources.fingerprint(dataset)

  reference = fingerprint(seed=0, split_seed=0)
  assert fingerprint(seed=1) == reference
  assert fingerprint(seed=1, split_seed=1) != reference


def test_test_fraction_0_is_refused_for_a_flat_folder(flat):
  with pytest.raises(data_sources.DataError) as e:
    data_sources.load_dataset('mnist', flat, test_fraction=0.0)
  message = str(e.value)
  assert '\n' not in message
  assert f'{flat} is a flat class folder' in message
  assert 'test_fraction is 0.0; accepted: test_fraction in (0, 1)' in message


def test_a_class_too_small_to_carve_is_named(flat):
  for name in os.listdir(os.path.join(flat, 'dog'))[1:]:
    os.remove(os.path.join(flat, 'dog', name))
  with pytest.raises(data_sources.DataError,
                     match=f"class 'dog' of {re.escape(flat)} has 1 "
                     f'readable image.* leaving 0 to train; accepted: '
                     f'test_fraction in'):
    data_sources.load_dataset('mnist', flat)


def readme_folder_commands():
  """The README's main.py commands that train on an image folder, DATA."""
  text = open(os.path.join(conftest.ROOT, 'README.md')).read()
  commands = []
  for block in re.findall(r'```sh\n(.*?)```', text, re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      words = shlex.split(line, comments=True)
      if 'main.py' in words and '--config.data_dir=DATA' in words:
        commands.append(words[words.index('main.py') + 1:])
  return commands


@pytest.mark.parametrize('layout', ['flat', 'split'])
def test_the_readme_image_folder_command_works_as_written(tmp_path, layout):
  commands = readme_folder_commands()
  assert len(commands) == 1
  # The dataset name is unused for image folders: the command needs none.
  assert not any(a.startswith('--config.dataset=') for a in commands[0])
  # 33 images to train on (flat: after the test split), a batch of 32.
  data = str(tmp_path / 'DATA')
  if layout == 'flat':
    make_flat_folder(data, num_images=14)
  else:
    conftest.make_image_folder(data, num_train=11, num_test=2)
  args = dict(a[2:].split('=', 1) for a in commands[0])
  assert args.pop('config') == 'configs/default.py'
  config = default.get_config()
  for key, value in args.items():  # As --config.KEY=VALUE overrides do.
    if key.startswith('config.'):
      key = key[len('config.'):]
      config[key] = cli.parse_value(value.replace('DATA', data), config[key])
  config.num_train_steps = 1
  workdir = str(tmp_path / 'run')
  assert train.train_and_evaluate(config, workdir)['final_step'] == 1
  info = json.load(open(os.path.join(workdir, 'dataset.json')))
  assert info['image_shape'] == [64, 64, 3]
  assert info['source'].startswith({
      'flat': f'flat folder:{data} (test: 0.2 of each class, drawn by '
              f'split_seed 0; decoded into memory in ',
      'split': f'folder:{data} (decoded into memory in '}[layout])
