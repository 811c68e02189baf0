"""Tests for train.py: whole runs through train_and_evaluate, with resume,
preemption, refused and allowed config changes, and divergence."""

import functools
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

import checkpointing
import conftest
import data_sources
import inference
import preemption
import train
import workdir_files
from configs import default


def tiny_config(data_dir='', **overrides):
  """12 steps at batch 8, logging and checkpointing every 4."""
  return conftest.tiny_config(data_dir, **dict(
      {'eval_batch_size': 16, 'num_train_steps': 12, 'log_every_steps': 4,
       'checkpoint_every_steps': 4}, **overrides))


def _restore_params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  step = manager.latest_step()
  state = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(step), 'state'))
  manager.close()
  return step, state['params']


def test_flax_example_test_pattern_works_offline(tmp_path, monkeypatch):
  # As the Flax examples test train_and_evaluate: configs/default.py with a
  # small batch, under mock_data, on a machine without network.
  monkeypatch.setattr(data_sources, '_network_reachable',
                      lambda *a, **k: False)
  config = default.get_config()
  config.num_epochs = 1
  config.batch_size = 8
  with tfds.testing.mock_data(num_examples=8):
    summary = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert summary['final_step'] == 1 and len(summary['history']) == 1


# About 8 s; the IDX route covers resume in the fast suite.
@pytest.mark.slow
def test_end_to_end_on_mock_tfds_with_resume(tmp_path):
  whole, split = str(tmp_path / 'whole'), str(tmp_path / 'split')
  with tfds.testing.mock_data(num_examples=40):
    summary = train.train_and_evaluate(tiny_config(), whole)
    # The same run in two sessions: stop at step 6, then carry on to 12.
    train.train_and_evaluate(tiny_config(num_train_steps=6), split)
    resumed = train.train_and_evaluate(tiny_config(), split)

  for name in ('summary.json', 'metrics.png', 'predictions.png',
               'config.json'):
    assert os.path.isfile(os.path.join(whole, name)), name
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(whole))
  on_disk = json.load(open(os.path.join(whole, 'summary.json')))
  assert on_disk['final_step'] == 12
  assert on_disk['config']['batch_size'] == 8
  # 40 examples / batch 8 = 5 steps per epoch: epochs end at 5, 10 and 12.
  assert [h['step'] for h in on_disk['history']] == [5, 10, 12]
  assert summary['test_accuracy'] == on_disk['history'][-1]['test_accuracy']

  step_a, params_a = _restore_params(whole)
  step_b, params_b = _restore_params(split)
  assert step_a == step_b == 12
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_array_equal(a, b)
  for key in ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy'):
    assert resumed[key] == summary[key], key
  # The stopped session added its own final evaluation at step 6.
  assert [h for h in resumed['history'] if h['step'] != 6] == summary['history']


def test_a_run_without_validation_says_the_test_set_chooses(
    tmp_path, idx_dir, caplog):
  with caplog.at_level('WARNING'):
    summary = train.train_and_evaluate(tiny_config(idx_dir, num_train_steps=2),
                                       str(tmp_path / 'w'))
  assert summary['best_chosen_on'] == 'test'
  assert 'No validation split: the best checkpoint is chosen on the test' in (
      caplog.text)


def test_finished_run_is_left_alone(tmp_path, idx_dir):
  workdir = str(tmp_path / 'w')
  config = tiny_config(idx_dir, dataset='mnist')
  assert train.train_and_evaluate(config, workdir) is not None
  path = os.path.join(workdir, 'summary.json')
  before = (open(path).read(), os.path.getmtime(path))
  assert train.train_and_evaluate(config, workdir) is None
  assert (open(path).read(), os.path.getmtime(path)) == before


# In-process whole runs on 256 examples: 32 steps per epoch at batch 8.
TOTAL_STEPS = 96


def run(data_dir, workdir, **overrides):
  config = conftest.tiny_config(data_dir, num_train_steps=TOTAL_STEPS)
  config.update(overrides)
  return train.train_and_evaluate(config, workdir)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, small_data_dir):
  workdir = str(tmp_path_factory.mktemp('reference'))
  run(small_data_dir, workdir)
  return workdir


def test_finished_run_without_results_writes_them_from_its_checkpoint(
    tmp_path, small_data_dir, reference):
  workdir = str(tmp_path / 'w')
  shutil.copytree(reference, workdir)
  for name in ('summary.json', 'metrics.png', 'predictions.png'):
    os.remove(os.path.join(workdir, name))
  summary = run(small_data_dir, workdir)
  assert summary is not None
  for name in ('metrics.png', 'predictions.png'):
    assert os.path.isfile(os.path.join(workdir, name))
  conftest.assert_same_run(workdir, reference, TOTAL_STEPS)


def test_preempted_run_resumes_bitwise(tmp_path, small_data_dir, reference,
                                       monkeypatch):
  workdir = str(tmp_path / 'w')
  monkeypatch.setenv('TRAINER_FAULT', 'term:step:30')
  with pytest.raises(preemption.Preempted, match='stopped by SIGTERM at step 30'):
    run(small_data_dir, workdir)
  assert conftest.checkpoint_steps(workdir)[-1] == 30
  # It says so, with what it had: its first epoch (32 steps) not yet done.
  summary = workdir_files.read_json(workdir, workdir_files.SUMMARY)
  assert summary['stop_reason'] == 'preempted'
  assert summary['final_step'] == 30 and summary['history'] == []
  assert not workdir_files.finished(workdir)
  monkeypatch.delenv('TRAINER_FAULT')
  run(small_data_dir, workdir)
  conftest.assert_same_run(workdir, reference, TOTAL_STEPS)
  assert workdir_files.read_json(workdir, workdir_files.SUMMARY)[
      'stop_reason'] == 'finished'


def test_a_preempted_run_keeps_the_time_of_its_last_partial_window(
    tmp_path, small_data_dir, monkeypatch):
  workdir = str(tmp_path / 'w')
  monkeypatch.setenv('TRAINER_FAULT', 'term:step:5')  # Logs every 10 steps.
  with pytest.raises(preemption.Preempted, match='at step 5 of'):
    run(small_data_dir, workdir)
  meta = checkpointing.read_meta(workdir_files.checkpoint_dir(workdir), 5)
  assert meta['elapsed']['train_seconds'] > 0


@pytest.mark.slow  # A second whole run to compare with: make test-all.
def test_preempted_between_accumulated_steps_resumes_bitwise(
    tmp_path, small_data_dir, monkeypatch):
  # Stopped after the first of two accumulated steps: the partial gradient
  # sum lives in the optimizer state (optax.MultiSteps) and is restored.
  accumulate = {'grad_accum_steps': 2, 'num_train_steps': 40,
                'lr_schedule': 'cosine'}
  reference, workdir = str(tmp_path / 'r'), str(tmp_path / 'w')
  run(small_data_dir, reference, **accumulate)
  monkeypatch.setenv('TRAINER_FAULT', 'term:step:33')
  with pytest.raises(preemption.Preempted, match='at step 33'):
    run(small_data_dir, workdir, **accumulate)
  monkeypatch.delenv('TRAINER_FAULT')
  run(small_data_dir, workdir, **accumulate)
  conftest.assert_same_run(workdir, reference, 40)


@pytest.fixture(scope='module')
def short_run(tmp_path_factory, small_data_dir):
  """A finished 24-step run to resume from."""
  workdir = str(tmp_path_factory.mktemp('short'))
  run(small_data_dir, workdir, num_train_steps=24)
  return workdir


@pytest.mark.parametrize('overrides,expected', [
    ({'batch_size': 16}, 'batch_size 8 there vs 16 here'),
    ({'seed': 1}, 'seed 0 there vs 1 here'),
    ({'model': 'mlp'}, "model 'cnn' there vs 'mlp' here"),
    ({'optimizer': 'adam'}, "optimizer 'sgd' there vs 'adam' here"),
    ({'lr_schedule': 'cosine'}, "lr_schedule 'constant' there vs 'cosine'"),
    ({'dataset': 'fashion_mnist'}, 'data {'),
])
def test_resume_refuses_changes_that_alter_the_run(short_run, small_data_dir,
                                                   overrides, expected):
  before = conftest.snapshot(short_run)
  with pytest.raises(checkpointing.IncompatibleCheckpointError) as error:
    run(small_data_dir, short_run, num_train_steps=48, **overrides)
  assert expected in str(error.value) and '\n' not in str(error.value)
  assert conftest.snapshot(short_run) == before


def test_a_resume_refused_by_the_input_route_touches_nothing(tmp_path):
  data = conftest.make_image_folder(str(tmp_path / 'photos'))
  workdir = str(tmp_path / 'w')
  config = conftest.tiny_config(data, num_train_steps=2, batch_size=4,
                                eval_batch_size=9)
  train.train_and_evaluate(config, workdir)
  before = conftest.snapshot(workdir)
  config.update(num_train_steps=4, data_on_device=True, data_loading='stream')
  with pytest.raises(ValueError,  # config_rules.ConfigError, now first.
                     match='data_on_device needs the training set in memory'):
    train.train_and_evaluate(config, workdir)
  assert conftest.snapshot(workdir) == before


def test_resume_refuses_other_data(short_run, tmp_path):
  other = conftest.make_idx_dir(str(tmp_path / 'other'), num_train=256,
                                num_test=50, seed=1)
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match="labels_crc32"):
    run(other, short_run, num_train_steps=48)


def test_resume_refuses_another_cosine_length(tmp_path, small_data_dir):
  workdir = str(tmp_path / 'w')
  run(small_data_dir, workdir, num_train_steps=24, lr_schedule='cosine')
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match="schedule_steps {'total_steps': 24, "
                     "'warmup_steps': 0} there vs {'total_steps': 48"):
    run(small_data_dir, workdir, num_train_steps=48, lr_schedule='cosine')


def test_allowed_changes_continue_and_are_logged(tmp_path, small_data_dir,
                                                 caplog):
  workdir = str(tmp_path / 'w')
  run(small_data_dir, workdir, num_train_steps=24)
  copy = str(tmp_path / 'copy')
  shutil.copytree(small_data_dir, copy)
  caplog.set_level('WARNING')
  summary = run(copy, workdir, num_train_steps=32, learning_rate=0.02,
                log_every_steps=8)
  assert summary['final_step'] == 32
  assert 'Resuming at step 24 with learning_rate=0.02 (the checkpoint was ' \
         'written with 0.01)' in caplog.text
  assert f'Resuming at step 24 with data_dir={copy!r}' in caplog.text


def test_second_trainer_on_a_workdir_is_refused(tmp_path, small_data_dir):
  workdir = str(tmp_path / 'w')
  os.makedirs(workdir)
  with workdir_files.hold_lock(workdir):
    with pytest.raises(workdir_files.WorkdirBusy,
                       match=f'in use by another trainer \\(pid {os.getpid()}'):
      run(small_data_dir, workdir)
    assert os.listdir(workdir) == ['.lock']
  run(small_data_dir, workdir, num_train_steps=8)  # Released: runs.


def test_divergence_stops_without_saving_nonfinite_state(tmp_path,
                                                         small_data_dir):
  workdir = str(tmp_path / 'w')
  run(small_data_dir, workdir, num_train_steps=24)
  with pytest.raises(train.DivergenceError,
                     match='not finite at step') as error:
    run(small_data_dir, workdir, learning_rate=1e6)
  bad_step = int(str(error.value).split('at step ')[1].split(';')[0])
  assert 24 < bad_step <= TOTAL_STEPS
  summary = workdir_files.read_json(workdir, workdir_files.SUMMARY)
  assert summary['stop_reason'] == 'diverged'
  assert summary['final_step'] == bad_step == error.value.step
  assert summary['error'] == str(error.value)
  # Its figures so far: the first run's end (step 24), nothing after.
  assert [h['step'] for h in summary['history']] == [24]
  assert conftest.checkpoint_steps(workdir)[-1] < bad_step
  _, state = conftest.final_state(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))


@pytest.mark.slow  # A second whole run to compare with: make test-all.
def test_prefetch_and_data_on_device_change_no_number(tmp_path,
                                                       small_data_dir,
                                                       reference):
  for name, overrides in (('no_prefetch', {'prefetch_batches': 0}),
                          ('on_device', {'data_on_device': True})):
    workdir = str(tmp_path / name)
    run(small_data_dir, workdir, **overrides)
    conftest.assert_same_run(workdir, reference, TOTAL_STEPS)


def test_validation_split_chooses_the_best_checkpoint(tmp_path,
                                                      small_data_dir):
  import inference  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'w')
  # 192 training examples left: 24 steps per epoch, 3 epochs.
  summary = run(small_data_dir, workdir, validation_fraction=0.25,
                num_train_steps=72, max_checkpoints_to_keep=1,
                eval_batch_size=1000)
  history = summary['history']
  assert [h['step'] for h in history] == [24, 48, 72]
  best = max(reversed(history), key=lambda h: h['validation_accuracy'])
  assert summary['best_chosen_on'] == 'validation'
  assert summary['best_step'] == best['step']
  assert summary['best_validation_accuracy'] == best['validation_accuracy']
  assert summary['best_test_accuracy'] == best['test_accuracy']
  # Orbax kept the checkpoint chosen on validation beside the latest.
  assert set(conftest.checkpoint_steps(workdir)) == {best['step'], 72}
  tags = {tag for tag, _ in conftest.scalar_points(workdir)}
  assert {'validation_accuracy', 'test_accuracy'} <= tags
  config = workdir_files.load_config(workdir)
  report = inference.evaluate_checkpoint(config, workdir, 'best',
                                         'validation')
  assert report['split'] == 'validation' and report['examples'] == 64
  assert report['accuracy'] == best['validation_accuracy']
  assert report['loss'] == best['validation_loss']
  assert 'on 64 validation examples' in inference.format_report(report)
  # The 50 test examples are evaluated in the batches training used (cut
  # to the larger validation split), so the numbers are the same exactly.
  report = inference.evaluate_checkpoint(config, workdir, 'latest', 'test')
  assert report['examples'] == 50
  assert (report['loss'], report['accuracy']) == (summary['test_loss'],
                                                  summary['test_accuracy'])


def test_a_test_split_smaller_than_the_plot_and_the_eval_batch(
    tmp_path, idx_dir):
  # 10 test examples; the 32 held out for validation set the eval batch.
  conftest.make_idx_dir(idx_dir, num_train=64, num_test=10)
  workdir = str(tmp_path / 'w')
  summary = run(idx_dir, workdir, validation_fraction=0.5, num_train_steps=4,
                eval_batch_size=40)
  assert summary['final_step'] == 4
  assert os.path.isfile(os.path.join(workdir, workdir_files.PREDICTIONS_PLOT))


# About 6 s: make test-all and CI.
@pytest.mark.slow
def test_image_folder_streamed_and_resumed_equals_in_memory(tmp_path,
                                                            monkeypatch):
  folder = conftest.make_image_folder(str(tmp_path / 'images'),
                                      num_train=16, num_test=4)
  # 48 images, 6 steps per epoch at batch 8; 12 steps; random-resized crops
  # drawn on the device, resumed bitwise too.
  config = functools.partial(conftest.tiny_config, folder, dataset='custom',
                             num_train_steps=12, eval_batch_size=8,
                             augment='rrc',
                             augment_kwargs={'scale': (0.3, 1.0)})
  memory, streamed = str(tmp_path / 'memory'), str(tmp_path / 'streamed')
  train.train_and_evaluate(config(data_loading='memory'), memory)
  monkeypatch.setenv('TRAINER_FAULT', 'term:step:4')
  with pytest.raises(preemption.Preempted):
    train.train_and_evaluate(config(data_loading='stream'), streamed)
  monkeypatch.delenv('TRAINER_FAULT')
  summary = train.train_and_evaluate(config(data_loading='stream'), streamed)
  conftest.assert_same_run(streamed, memory, 12)
  info = json.load(open(os.path.join(streamed, 'dataset.json')))
  assert info['class_names'] == ['cat', 'dog', 'fox']
  assert info['image_shape'] == [12, 10, 3]
  assert 'decoded per batch' in info['source']
  assert summary['test_accuracy'] > 0


def test_zero_steps_evaluates_and_saves_the_initial_state(tmp_path):
  data = conftest.make_idx_dir(str(tmp_path / 'data'), num_train=32,
                               num_test=20)
  workdir = str(tmp_path / 'w')
  config = conftest.tiny_config(data, num_train_steps=0)
  summary = train.train_and_evaluate(config, workdir)
  assert summary['best_step'] == 0 and summary['final_step'] == 0
  assert summary['history'] == [{'epoch': 0.0, 'step': 0, **{
      k: summary[k] for k in summary if k.startswith('test_')}}]
  report = inference.evaluate_checkpoint(workdir_files.load_config(workdir),
                                         workdir)  # Its default: best.
  assert report['checkpoint_step'] == 0
  assert report['accuracy'] == summary['test_accuracy']
  assert train.train_and_evaluate(config, workdir) is None  # Finished.


# About 4 s: make test-all and CI.
@pytest.mark.slow
def test_normalize_is_applied_alike_in_training_and_eval(tmp_path):
  data = conftest.make_idx_dir(str(tmp_path / 'data'), num_train=32,
                               num_test=20)
  summaries = {}
  for normalize in ('none', '0.5/0.25'):
    workdir = str(tmp_path / normalize.replace('/', '_'))
    summaries[normalize] = train.train_and_evaluate(conftest.tiny_config(
        data, num_train_steps=4, normalize=normalize), workdir)
  report = inference.evaluate_checkpoint(workdir_files.load_config(workdir),
                                         workdir, 'latest')
  assert report['loss'] == summaries['0.5/0.25']['test_loss']
  assert summaries['none']['test_loss'] != summaries['0.5/0.25']['test_loss']
