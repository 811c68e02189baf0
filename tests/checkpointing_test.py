"""Tests for checkpointing.py, in-process on small states: which checkpoint
restores, what is moved aside, and what stops the run instead."""

import errno
import json
import os
import shutil

import numpy as np
import pytest

import checkpointing
import workdir_files


def make_state(value):
  return {'w': np.full((3, 2), value, np.float32),
          'step': np.array(value, np.int32)}


def write_checkpoints(directory, steps, signature=None):
  """Checkpoints whose state holds their own step number."""
  manager = checkpointing.create_manager(directory, max_to_keep=10)
  for step in steps:
    state = make_state(step)
    meta = {'history': [], 'elapsed': {},
            'signature': signature or checkpointing.signature(state, a=1)}
    checkpointing.save(manager, step, state, meta)
  checkpointing.wait(manager)
  manager.close()


def restore(directory, **fields):
  target = make_state(0)
  return checkpointing.restore_latest(
      directory, target, checkpointing.signature(target, **(fields or
                                                            {'a': 1})))


def truncate_state_files(directory, step):
  for root, _, files in os.walk(os.path.join(directory, str(step), 'state')):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.fixture
def directory(tmp_path):
  path = str(tmp_path / 'checkpoints')
  write_checkpoints(path, [10, 20, 30])
  return path


def assert_nothing_moved(directory):
  assert checkpointing.finished_steps(directory) == [10, 20, 30]
  assert not os.path.exists(os.path.join(os.path.dirname(directory),
                                         workdir_files.UNREADABLE_CHECKPOINTS))


def test_newest_restores(directory):
  state, meta = restore(directory)
  assert int(state['step']) == 30 and state['w'][0, 0] == 30.0
  assert meta['history'] == []


def test_no_checkpoint_is_none(tmp_path):
  assert restore(str(tmp_path / 'nothing')) is None


def test_bad_data_falls_back_and_is_moved_aside(directory):
  truncate_state_files(directory, 30)
  state, _ = restore(directory)
  assert int(state['step']) == 20
  assert checkpointing.finished_steps(directory) == [10, 20]
  moved = os.listdir(os.path.join(os.path.dirname(directory),
                                  workdir_files.UNREADABLE_CHECKPOINTS))
  assert len(moved) == 1 and moved[0].startswith('30-')


def test_unparsable_meta_of_every_checkpoint_stops_and_moves_nothing(
    directory):
  for step in (10, 20, 30):
    with open(os.path.join(directory, str(step), 'meta', 'metadata'),
              'w') as f:
      f.write('{not json')
  with pytest.raises(checkpointing.CheckpointError,
                     match='no checkpoint in .* can be restored: step 30'):
    restore(directory)
  assert_nothing_moved(directory)


def test_io_error_stops_and_moves_nothing(directory, monkeypatch):
  monkeypatch.setenv('TRAINER_FAULT', 'eio:restore:30')
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'checkpoint 30 .*could not be read \(OSError'):
    restore(directory)
  assert_nothing_moved(directory)


def test_a_version_mismatch_stops_and_moves_nothing(directory, monkeypatch):
  real = checkpointing.read_meta

  def newer_library(folder, step):
    if step == 30:
      raise KeyError('item_handlers')  # As a reader of another layout.
    return real(folder, step)

  monkeypatch.setattr(checkpointing, 'read_meta', newer_library)
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'checkpoint 30 .*could not be read \(KeyError'):
    restore(directory)
  assert_nothing_moved(directory)


def test_leftover_temporary_folder_is_ignored(directory):
  shutil.copytree(os.path.join(directory, '30'),
                  os.path.join(directory, '40.orbax-checkpoint-tmp-9'))
  state, _ = restore(directory)
  assert int(state['step']) == 30


def test_incompatible_signature_is_refused_not_skipped(directory):
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match="a 1 there vs 2 here"):
    restore(directory, a=2)
  assert checkpointing.finished_steps(directory) == [10, 20, 30]


def test_fields_an_older_checkpoint_did_not_record_are_not_compared(
    directory):
  state, _ = restore(directory, a=1, batch_size=32)
  assert int(state['step']) == 30


@pytest.mark.parametrize('error,bad_data', [
    (json.JSONDecodeError('Expecting value', '', 0), True),
    (FileNotFoundError('File /x/metadata not found.'), True),
    (ValueError('OUT_OF_RANGE: Error reading "a/0" in OCDBT database'), True),
    (ValueError('DATA_LOSS: checksum mismatch'), True),
    (checkpointing.DamagedMetaError('meta item has no signature'), True),
    # What another library version raises says nothing about the bytes.
    (KeyError('params'), False),
    (ValueError('Unsupported checkpoint format version 9'), False),
    (OSError(errno.EIO, 'Input/output error'), False),
    (PermissionError(errno.EACCES, 'Permission denied'), False),
    (MemoryError(), False),
    (RuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating 4 GiB'),
     False),
    (ValueError('UNAVAILABLE: connection reset'), False),
    (ValueError('RESOURCE_EXHAUSTED: out of memory'), False),
])
def test_only_bad_data_counts_as_damage(error, bad_data):
  assert checkpointing.is_bad_data(error) is bad_data


def test_signature_lists_state_shapes():
  sig = checkpointing.signature(make_state(0), model='cnn')
  assert sig == {'model': 'cnn', 'format': checkpointing.FORMAT,
                 'state': {"['step']": 'int32[]', "['w']": 'float32[3, 2]'}}


def test_checkpoint_of_an_older_format_is_refused_in_one_line(tmp_path):
  directory = str(tmp_path / 'checkpoints')
  old = checkpointing.signature(make_state(0), a=1)
  del old['format']  # As version 1 wrote them.
  write_checkpoints(directory, [10], signature=old)
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match='another version of this trainer .checkpoint '
                           'format 1; this version reads format 2'):
    restore(directory)
