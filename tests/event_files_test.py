"""Tests for event_files.py: event files cut back to a restored step."""

import os

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer import event_file_writer

import event_files


def write_points(logdir, steps, tag='loss'):
  writer = event_file_writer.EventFileWriter(logdir)
  for step in steps:
    writer.add_event(event_pb2.Event(step=step, summary=summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, simple_value=step / 10)])))
  writer.close()
  return event_files.event_paths(logdir)[-1]


def steps_in(path):
  return [e.step for e in event_files.read_events(path) if e.summary.value]


def test_drops_points_after_the_step_and_keeps_the_rest(tmp_path):
  path = write_points(str(tmp_path), [10, 20, 30, 40])
  assert event_files.truncate_after(str(tmp_path), 20) == 2
  assert steps_in(path) == [10, 20]
  assert event_files.truncate_after(str(tmp_path), 20) == 0
  assert not [n for n in os.listdir(tmp_path) if n.endswith('.truncating')]


def test_a_half_written_last_record_is_skipped(tmp_path):
  path = write_points(str(tmp_path), [10, 20, 30])
  with open(path, 'r+b') as f:  # A kill in the middle of the last write.
    f.truncate(os.path.getsize(path) - 5)
  assert steps_in(path) == [10, 20]
  event_files.truncate_after(str(tmp_path), 10)
  assert steps_in(path) == [10]


def test_minus_one_empties_every_file(tmp_path):
  path = write_points(str(tmp_path), [1, 2])
  event_files.truncate_after(str(tmp_path), -1)
  assert steps_in(path) == []
