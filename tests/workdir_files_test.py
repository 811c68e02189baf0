"""Tests for workdir_files.py: the lock, JSON written whole, configs read
back, and one-line errors for missing or damaged files."""

import json
import os

import pytest

from configs import default
from configs import workdir as workdir_config
import workdir_files


def test_a_second_holder_is_refused_and_named(tmp_path):
  workdir = str(tmp_path)
  with workdir_files.hold_lock(workdir):
    # flock locks belong to an open file, so a second open in this same
    # process is refused as another process would be.
    with pytest.raises(workdir_files.WorkdirBusy,
                       match=f'pid {os.getpid()} on'):
      with workdir_files.hold_lock(workdir):
        pass
  with workdir_files.hold_lock(workdir):  # Released when the body ends.
    pass


def test_write_json_replaces_whole_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / workdir_files.SUMMARY)
  workdir_files.write_json(path, {'a': 1})
  workdir_files.write_json(path, {'a': 2})
  assert json.load(open(path)) == {'a': 2}
  assert os.listdir(tmp_path) == [workdir_files.SUMMARY]


def test_saved_config_fills_missing_keys_from_the_defaults(tmp_path):
  workdir_files.write_json(str(tmp_path / workdir_files.CONFIG),
                           {'learning_rate': 0.5})
  config = workdir_files.load_config(str(tmp_path))
  assert config.learning_rate == 0.5
  assert config.batch_size == default.get_config().batch_size
  # configs/workdir.py reads it the same way.
  assert workdir_config.get_config(str(tmp_path)) == config


@pytest.mark.parametrize('content,message', [
    (None, 'has no config.json: not a training workdir'),
    ('{"learning_rate": 0.',
     r'config.json cannot be read \(JSONDecodeError'),
    ('[1, 2]', 'holds list, not a config'),
])
def test_missing_or_damaged_config_is_one_line(tmp_path, content, message):
  if content is not None:
    (tmp_path / workdir_files.CONFIG).write_text(content)
  with pytest.raises(workdir_files.WorkdirError, match=message) as error:
    workdir_files.load_config(str(tmp_path))
  assert '\n' not in str(error.value)


def test_check_writable_creates_the_folder_and_refuses_a_file(tmp_path):
  workdir_files.check_writable(str(tmp_path / 'new' / 'run'))
  assert os.path.isdir(tmp_path / 'new' / 'run')
  (tmp_path / 'file').write_text('x')
  with pytest.raises(workdir_files.WorkdirError, match='is a file'):
    workdir_files.check_writable(str(tmp_path / 'file'))
