"""Tests for reporting.py: logged windows, epoch records, progress."""

import json
import logging as std_logging

from absl import logging
import jax
import pytest

from configs import default
import distributed
import models
import optimizers
import reporting
import steps
from steps_test import _fixed_batch


class RecordingWriter:
  def __init__(self):
    self.scalars = []

  def write_scalars(self, step, scalars, log=True):
    del log
    self.scalars.append((step, dict(scalars)))


def _trained_state(num_steps=3):
  state = steps.create_train_state(
      models.create_model('cnn', 10),
      optimizers.create_optimizer('sgd', 0.05, 0.9), (28, 28, 1), 0)
  images, labels = _fixed_batch()
  for _ in range(num_steps):
    state = jax.jit(steps.train_step)(state, images, labels)
  return state


def test_log_train_window_writes_every_metric_and_starts_a_new_window():
  state, writer = _trained_state(), RecordingWriter()
  expected = {f'train_{k}': float(v)
              for k, v in state.window_metrics.compute().items()}
  state = reporting.log_train_window(writer, state, 3, 0.05, 123.0,
                                 distributed.Mesh())
  assert writer.scalars == [(3, {**expected, 'learning_rate': 0.05,
                                 'images_per_second': 123.0})]
  assert set(expected) == {'train_loss', 'train_accuracy',
                           'train_top5_accuracy'}
  assert int(state.window_metrics.loss.count) == 0
  assert int(state.epoch_metrics.loss.count) == 48  # Untouched.


@pytest.mark.parametrize('step,resets', [(8, True), (6, False)])
def test_end_epoch_records_train_and_evaluated_metrics(step, resets):
  state, writer, history = _trained_state(), RecordingWriter(), []
  test = {'loss': 1.5, 'accuracy': 0.5, 'top5_accuracy': 0.9}
  state = reporting.end_epoch(writer, state, step, 4,
                          {'validation': {'accuracy': 0.25}, 'test': test},
                          history, distributed.Mesh())
  assert history[0]['epoch'] == step / 4 and history[0]['step'] == step
  assert history[0]['test_accuracy'] == 0.5
  assert history[0]['validation_accuracy'] == 0.25
  assert set(history[0]) == {'epoch', 'step', 'train_loss', 'train_accuracy',
                             'train_top5_accuracy', 'validation_accuracy',
                             'test_loss', 'test_accuracy',
                             'test_top5_accuracy'}
  assert writer.scalars[0][1]['epoch_train_loss'] == history[0]['train_loss']
  assert writer.scalars[0][1]['validation_accuracy'] == 0.25
  # Mid-epoch (the run's last step): the epoch accumulator is kept.
  assert (int(state.epoch_metrics.loss.count) == 0) == resets


def test_progress_round_trips_through_checkpoint_meta():
  progress = reporting.Progress(history=[{'step': 4}], train_seconds=2.0,
                            earlier_wall_seconds=5.0)
  meta = progress.meta({'format': 2}, default.get_config().to_dict())
  again = reporting.Progress.from_meta(json.loads(json.dumps(meta)))
  assert again.history == [{'step': 4}] and again.train_seconds == 2.0
  assert again.earlier_wall_seconds >= 5.0
  assert reporting.Progress.from_meta(None).history == []


def test_plotted_examples_spread_over_the_split_and_stay_inside_it():
  assert list(reporting.plotted_examples(10)) == list(range(10))
  spread = reporting.plotted_examples(1000)
  assert len(spread) == reporting.NUM_PLOTTED_PREDICTIONS
  assert spread[0] == 0 and spread[-1] == 999
  # 10 classes of 100, sorted by class: every class is shown.
  assert len(set(spread // 100)) == 10


def test_a_resume_under_another_runtime_is_said_and_recorded(monkeypatch,
                                                            caplog):
  meta = json.loads(json.dumps(reporting.Progress(history=[]).meta({}, {})))
  assert meta['runtime']['jax'] == jax.__version__
  assert reporting.Progress.from_meta(meta, 8).runtime_changes == []
  newer = dict(reporting.runtime_facts(), jax='9.9.9')
  monkeypatch.setattr(reporting, 'runtime_facts', lambda: newer)
  with caplog.at_level('WARNING'):
    progress = reporting.Progress.from_meta(meta, 8)
  assert progress.runtime_changes == [
      {'resumed_at_step': 8, 'changed': {'jax': [jax.__version__, '9.9.9']}}]
  assert 'Resuming under another runtime (jax' in caplog.text
  # Kept through the next checkpoint and resume.
  again = reporting.Progress.from_meta(progress.meta({}, {}), 16)
  assert again.runtime_changes == progress.runtime_changes


def test_the_model_is_one_line_unless_verbose(caplog):
  model = models.create_model('cnn', 10)
  with caplog.at_level(std_logging.INFO):
    reporting.log_model(model, 'cnn', (64, 64, 1))
  lines = [r.getMessage() for r in caplog.records]
  assert lines[0] == ('Model cnn: 4,215,946 parameters (16.9 MB as float32); '
                      '--verbosity=1 logs a table of its layers')
  assert '4,194,304 of its weights at 64 px' in lines[1]
  assert 'model=resnet18' in lines[1] and len(lines) == 2
  caplog.clear()
  verbosity = logging.get_verbosity()
  level = std_logging.getLogger('absl').level
  logging.set_verbosity(1)
  try:
    with caplog.at_level(std_logging.INFO):
      reporting.log_model(model, 'cnn', (28, 28, 1))
  finally:
    logging.set_verbosity(verbosity)
    std_logging.getLogger('absl').setLevel(level)  # As other tests expect.
  lines = [r.getMessage() for r in caplog.records]
  assert lines[0] == 'Model cnn: 824,458 parameters (3.3 MB as float32)'
  assert 'Dense_0' in lines[1] and len(lines) == 2  # The table; no CNN note.


def test_time_left_is_from_the_mean_rate_of_the_session(monkeypatch, caplog):
  clock = [100.0]
  monkeypatch.setattr(reporting.time, 'monotonic', lambda: clock[0])

  class Writer:
    def write_scalars(self, step, scalars, log):
      del step, scalars, log

  progress = reporting.ReportProgress(1000, Writer())
  with caplog.at_level(std_logging.INFO):
    progress(0)  # The first step: compiling.
    for step, seconds in ((100, 60), (120, 60)):  # The second minute holds
      clock[0] += seconds                         # an evaluation.
      progress(step)
  last = caplog.records[-1].getMessage()
  # 120 steps in 120 s: 880 s left (the last minute's rate says 44 min).
  assert last.startswith(
      '0.3 steps/s, 12.0% (120/1000), 14 min 40 s left'), last
