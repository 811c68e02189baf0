"""Tests for event_files.py: writing event files, and cutting them back to
a restored step."""

import os

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer import event_file_writer

import conftest
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


def test_summary_writer_writes_scalars_and_hparams(tmp_path):
  writer = event_files.SummaryWriter(str(tmp_path))
  writer.write_hparams({'model': 'cnn', 'kwargs': {'dropout_rate': 0.5}})
  writer.write_scalars(7, {'train_loss': 0.25, 'images_per_second': 100})
  writer.close()
  events = [e for p in event_files.event_paths(str(tmp_path))
            for e in event_files.read_events(p)]
  assert events[0].file_version == 'brain.Event:2'
  values = {v.tag: (e.step, v) for e in events for v in e.summary.value}
  step, loss = values['train_loss']
  assert step == 7 and loss.metadata.plugin_data.plugin_name == 'scalars'
  assert loss.tensor.float_val == [0.25]
  assert '_hparams_/session_start_info' in values
  # Logging only (processes other than 0): no files.
  event_files.SummaryWriter(None).write_scalars(1, {'x': 1.0})
  assert len(event_files.event_paths(str(tmp_path))) == 1


def test_training_imports_no_tensorflow():
  # TensorFlow takes seconds to import; the IDX and image-folder routes, the
  # metric writer and a resume's cutting back of event files must not pull
  # it in.
  result = conftest.run_python(['-c', (
      'import sys, train, inference, event_files, tempfile; '
      'd = tempfile.mkdtemp(); w = event_files.SummaryWriter(d); '
      'w.write_scalars(1, {"a": 1.0}); w.write_scalars(2, {"a": 2.0}); '
      'w.close(); assert event_files.truncate_after(d, 1) == 1; '
      'print(sorted(m for m in sys.modules '
      'if m.split(".")[0] == "tensorflow"))')])
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '[]'
