"""Tests for controls.py: class weights, and the per-epoch decisions of
early stopping and the plateau schedule, through real runs too."""

import json
import os
import shutil

import numpy as np
import pytest

import config_rules
import conftest
import controls
import train


def history(values, metric='test_accuracy'):
  return [{'epoch': i + 1, metric: v} for i, v in enumerate(values)]


def test_balanced_weights_are_inverse_frequency():
  labels = np.array([0] * 8 + [1] * 2)
  assert controls.class_weights('balanced', labels, 3) == (
      pytest.approx(10 / 24), pytest.approx(10 / 6), 0.0)
  assert controls.class_weights('1,1,10', labels, 3) == (1.0, 1.0, 10.0)
  assert controls.class_weights('', labels, 3) is None


@pytest.mark.parametrize('text,message', [
    ('1,-1', "class_weights '1,-1' is not usable; accepted: '' (none), "
     "balanced, or one number >= 0 per class, e.g. '1,1,10'"),
    ('heavy', "class_weights 'heavy' is not usable"),
    ('0,0', "class_weights '0,0' is not usable"),
    ('1,nan', "class_weights '1,nan' is not usable"),
])
def test_bad_class_weights_are_named(text, message):
  with pytest.raises(controls.ControlError) as e:
    controls.parse_class_weights(text)
  assert str(e.value).startswith(message)


def test_a_weight_list_of_another_length_is_refused():
  with pytest.raises(controls.ControlError, match="class_weights '1,2' gives "
                     '2 weights for 3 classes'):
    controls.class_weights('1,2', np.array([0, 1, 2]), 3)


def test_early_stopping_counts_epochs_without_improvement():
  values = [0.5, 0.6, 0.6, 0.605, 0.61, 0.59]
  assert controls.epochs_without_improvement(history(values),
                                             'test_accuracy') == 1
  # With a min_delta of 0.02 nothing after 0.6 counts as an improvement.
  assert controls.epochs_without_improvement(
      history(values), 'test_accuracy', 0.02) == 4
  assert controls.should_stop(history(values), 'test_accuracy', 4, 0.02)
  assert not controls.should_stop(history(values), 'test_accuracy', 0, 0.02)
  # A loss improves downwards.
  assert controls.epochs_without_improvement(
      history([1.0, 0.9, 0.95], 'test_loss'), 'test_loss') == 1


def test_plateau_cuts_once_per_patience_and_starts_counting_again():
  values = [0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.6]
  assert controls.plateau_reductions(history(values), 'test_accuracy',
                                     2) == 2
  assert controls.plateau_reductions(history(values), 'test_accuracy',
                                     1) == 5


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return conftest.make_idx_dir(str(tmp_path_factory.mktemp('data')),
                               num_train=64, num_test=20)


def stopping_config(data_dir, **overrides):
  return conftest.tiny_config(data_dir, **{
      'batch_size': 32, 'num_epochs': 12, 'early_stopping_patience': 3,
      'lr_schedule': 'plateau', 'plateau_patience': 1, **overrides})


def test_a_stopped_run_ends_early_resumes_exactly_and_stays_stopped(
    tmp_path, data_dir):
  workdir = str(tmp_path / 'w')
  summary = train.train_and_evaluate(stopping_config(data_dir), workdir)
  assert summary['stop_reason'] == 'early_stopping'
  stopped = summary['final_step']
  assert 0 < stopped < 24
  accuracies = [h['test_accuracy'] for h in summary['history']]
  assert controls.epochs_without_improvement(summary['history'],
                                             'test_accuracy') == 3
  assert max(accuracies[:-3]) >= max(accuracies[-3:])
  # The plateau factor in the optimizer state: one cut (patience 1) per
  # epoch without improvement.
  cuts = controls.plateau_reductions(summary['history'], 'test_accuracy', 1)
  assert cuts >= 3
  _, state = conftest.final_state(workdir)
  assert float(_find(state['opt_state'], 'step_size')) == pytest.approx(
      0.1 ** cuts)
  # Run again: it stays stopped and trains nothing.
  assert train.train_and_evaluate(stopping_config(data_dir), workdir) is None
  # A run that lost its newest checkpoints resumes to the same stop, bit for
  # bit: the decisions are taken from the checkpointed history.
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(workdir, resumed)
  steps = conftest.checkpoint_steps(resumed)
  for step in steps[steps.index(2) + 1:]:
    shutil.rmtree(os.path.join(resumed, 'checkpoints', str(step)))
  os.remove(os.path.join(resumed, 'summary.json'))
  train.train_and_evaluate(stopping_config(data_dir), resumed)
  conftest.assert_same_run(resumed, workdir, stopped)
  assert json.load(open(os.path.join(resumed, 'summary.json')))[
      'stop_reason'] == 'early_stopping'


def test_an_unknown_metric_is_refused_before_the_workdir_is_made(tmp_path,
                                                                 data_dir):
  workdir = str(tmp_path / 'w')
  with pytest.raises(config_rules.ConfigError, match="early_stopping_metric "
                     "'validation_accuracy' is not a metric of this run; "
                     'accepted: test_accuracy, test_top5_accuracy, '
                     'test_loss'):
    train.train_and_evaluate(stopping_config(
        data_dir, early_stopping_metric='validation_accuracy'), workdir)
  with pytest.raises(config_rules.ConfigError, match="gives 2 weights for "
                     '10 classes'):
    train.train_and_evaluate(stopping_config(data_dir, class_weights='1,2'),
                             workdir)
  assert not os.path.exists(workdir)


def _find(tree, key):
  """The value under `key` anywhere in nested dicts and lists."""
  if isinstance(tree, dict):
    if key in tree:
      return tree[key]
    tree = list(tree.values())
  if isinstance(tree, (list, tuple)):
    for item in tree:
      found = _find(item, key)
      if found is not None:
        return found
  return None
