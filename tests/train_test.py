"""Tests for train.py: the step, the schedules, and whole runs with resume."""

import functools
import json
import os
import shutil
import time

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import psutil
import pytest
import tensorflow_datasets as tfds

import checkpointing
import conftest
import distributed
import input_pipeline
import models
import optimizers
import train
import workdir_lock
from configs import default


def tiny_config(data_dir='', **overrides):
  """12 steps at batch 8, logging and checkpointing every 4."""
  return conftest.tiny_config(data_dir, **dict(
      {'eval_batch_size': 16, 'num_train_steps': 12, 'log_every_steps': 4,
       'checkpoint_every_steps': 4}, **overrides))


def test_compute_steps():
  assert train.compute_steps(60000, 32, 10, -1, 0.5) == (1875, 18750, 938)
  assert train.compute_steps(60000, 32, 10, 100, 0) == (1875, 100, 0)
  with pytest.raises(train.ConfigError, match='larger than the training set'):
    train.compute_steps(10, 32, 1, -1, 0)


def _fixed_batch():
  rng = np.random.default_rng(0)
  images = 0.2 * rng.random((16, 28, 28, 1), dtype=np.float32)
  labels = rng.integers(0, 10, 16).astype(np.int32)
  for i, label in enumerate(labels):  # Learnable: a band per class.
    images[i, 2 * label:2 * label + 2] = 1.0
  return jnp.asarray(images), jnp.asarray(labels)


def test_train_step_lowers_loss_on_a_fixed_batch():
  model = models.create_model('cnn', 10)
  state = train.create_train_state(
      model, optimizers.create_optimizer('sgd', 0.05, 0.9, 0), (28, 28, 1), 0)
  step = jax.jit(train.train_step)
  images, labels = _fixed_batch()
  losses = []
  for _ in range(10):
    state = step(state, images, labels)
    window = state.window_metrics.compute()
    losses.append(float(window['loss']))
    state = state.replace(
        window_metrics=type(state.window_metrics).empty())
  assert int(state.step) == 10
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  assert losses[-1] < 0.5 * losses[0]
  # The epoch accumulator counted every example of every step.
  assert int(state.epoch_metrics.accuracy.count) == 160
  assert int(state.nonfinite_step) == -1


class NanGradient(nn.Module):
  """Finite outputs, NaN gradient: d sqrt(z)/dz at z = 0 times zero."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    z = self.param('z', nn.initializers.zeros, ())
    logits = nn.Dense(10)(x.reshape((x.shape[0], -1)))
    return logits + 0.0 * jnp.sqrt(z)


def test_nonfinite_gradient_with_finite_loss_is_caught_at_its_step():
  state = train.create_train_state(
      NanGradient(), optimizers.create_optimizer('sgd', 0.01, 0.0, 0),
      (28, 28, 1), 0)
  images, labels = _fixed_batch()
  step = jax.jit(train.train_step)
  state = step(state, images, labels)
  assert np.isfinite(float(state.window_metrics.compute()['loss']))
  assert int(state.nonfinite_step) == 1
  state = step(state, images, labels)
  assert int(state.nonfinite_step) == 1  # The first bad step is kept.


def test_nonfinite_parameters_with_finite_gradients_are_caught():
  # An update that overflows (scaled by inf) from finite loss and gradients.
  tx = optax.chain(optax.sgd(0.01), optax.scale(float('inf')))
  state = train.create_train_state(models.create_model('mlp', 10), tx,
                                   (28, 28, 1), 0)
  images, labels = _fixed_batch()
  state = jax.jit(train.train_step)(state, images, labels)
  assert np.isfinite(float(state.window_metrics.compute()['loss']))
  assert int(state.nonfinite_step) == 1


def test_eval_step_masks_padding():
  model = models.create_model('cnn', 10)
  state = train.create_train_state(
      model, optimizers.create_optimizer('sgd', 0.01, 0.9, 0), (28, 28, 1), 0)
  images, labels = _fixed_batch()
  mask = jnp.arange(16) < 5
  masked = train.eval_step(state, images, labels, mask)
  first5 = train.eval_step(state, images[:5], labels[:5], jnp.ones(5, bool))
  assert int(masked.loss.count) == 5
  np.testing.assert_allclose(masked.compute()['loss'],
                             first5.compute()['loss'], rtol=1e-6)


@pytest.mark.parametrize('name,kwargs', [
    ('cnn', {}),
    ('resnet18', {'widths': (4, 4, 8, 8), 'stem_width': 4, 'stem': 'small'})])
def test_state_initialisation_matches_the_default_compiler_level(name,
                                                                 kwargs):
  # create_train_state compiles with RUN_ONCE_COMPILER_OPTIONS for a faster
  # start; the values must be those of XLA's default level, bit for bit.
  model = models.create_model(name, 10, **kwargs)
  tx = optimizers.create_optimizer('momentum', 0.1, 0.9)
  fast = train.create_train_state(model, tx, (28, 28, 1), 3, ema=True)
  default_level = jax.jit(train.state_initializer(
      model, tx, (28, 28, 1), ema=True))(jax.random.PRNGKey(3))
  assert train.RUN_ONCE_COMPILER_OPTIONS
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(default_level),
                  strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def _resnet_state(**kwargs):
  model = models.create_model('resnet20', 10, dropout_rate=0.5)
  tx = optimizers.create_optimizer('sgd', 0.05, 0.9)
  return train.create_train_state(model, tx, (28, 28, 1), 0, **kwargs)


def test_train_step_updates_batch_stats_and_draws_dropout_per_step():
  state = _resnet_state()
  images, labels = _fixed_batch()
  step = jax.jit(train.train_step)
  after = step(state, images, labels)
  assert not np.array_equal(
      jax.tree.leaves(after.model_state)[0],
      jax.tree.leaves(state.model_state)[0])
  # The same step (same fold_in(rng, step)) draws the same mask: the same
  # result twice; a later step, with the same parameters, draws another.
  again = step(_resnet_state(), images, labels)
  for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(a, b)
  shifted = _resnet_state()
  shifted = step(shifted.replace(step=jnp.ones((), jnp.int32)), images,
                 labels)
  dense = lambda s: s.params['Dense_0']['kernel']  # After the dropout.
  assert not np.array_equal(dense(after), dense(shifted))


def test_eval_uses_running_statistics_without_changing_them():
  state = _resnet_state()
  images, labels = _fixed_batch()
  first = train.eval_step(state, images, labels, jnp.ones(16, bool))
  second = train.eval_step(state, images, labels, jnp.ones(16, bool))
  assert first.compute()['loss'] == second.compute()['loss']


def test_ema_follows_its_formula():
  state = _resnet_state(ema=True)
  images, labels = _fixed_batch()
  step = jax.jit(functools.partial(train.train_step, ema_decay=0.9))
  first = step(state, images, labels)
  # Update 1: the mean of the initial and the new variables (1/2 > 1 - 0.9).
  for ema, old, new in zip(jax.tree.leaves(first.ema_variables),
                           jax.tree.leaves(state.eval_variables(False)),
                           jax.tree.leaves(first.eval_variables(False))):
    np.testing.assert_allclose(ema, 0.5 * old + 0.5 * new, rtol=1e-6,
                               atol=1e-7)
  later = first.replace(step=jnp.array(20, jnp.int32))
  after = step(later, images, labels)
  # Update 21: 1/22 < 0.1, so the EMA rate 0.1 (BatchNorm statistics too).
  for ema, old, new in zip(jax.tree.leaves(after.ema_variables),
                           jax.tree.leaves(later.ema_variables),
                           jax.tree.leaves(after.eval_variables(False))):
    np.testing.assert_allclose(ema, 0.9 * old + 0.1 * new, rtol=1e-5,
                               atol=1e-6)
  with_ema = train.eval_step(after, images, labels, jnp.ones(16, bool),
                             use_ema=True)
  live = train.eval_step(after, images, labels, jnp.ones(16, bool))
  assert with_ema.compute()['loss'] != live.compute()['loss']


def test_label_smoothing_follows_its_formula():
  logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
  labels = jnp.array([0, 2])
  a = 0.1
  log_p = jax.nn.log_softmax(logits)
  targets = (1 - a) * jax.nn.one_hot(labels, 3) + a / 3
  expected = -(targets * log_p).sum(-1)
  np.testing.assert_allclose(train.cross_entropy(logits, labels, a),
                             expected, rtol=1e-6)
  np.testing.assert_allclose(train.cross_entropy(logits, labels),
                             -log_p[jnp.arange(2), labels], rtol=1e-6)


def test_top5_accuracy_only_with_more_than_5_classes():
  assert 'top5_accuracy' in train.create_metrics(10).__annotations__
  assert 'top5_accuracy' not in train.create_metrics(5).__annotations__
  logits = jnp.array([[9., 8, 7, 6, 5, 4, 3], [9., 8, 7, 6, 5, 4, 3]])
  metrics = train.create_metrics(7).single_from_model_output(
      loss=jnp.zeros(2), logits=logits, labels=jnp.array([4, 5]))
  values = metrics.compute()
  assert float(values['top5_accuracy']) == 0.5
  assert float(values['accuracy']) == 0.0


def test_bfloat16_compute_keeps_float32_parameters_and_state():
  model = models.create_model('cnn', 10, dtype='bfloat16')
  state = train.create_train_state(
      model, optimizers.create_optimizer('sgd', 0.05, 0.9), (28, 28, 1), 0)
  images, labels = _fixed_batch()
  state = jax.jit(train.train_step)(state, images, labels)
  dtypes = {x.dtype for x in jax.tree.leaves((state.params,
                                               state.opt_state))}
  assert dtypes == {np.dtype(np.float32)}
  assert state.window_metrics.compute()['loss'].dtype == np.float32


class RecordingWriter:
  def __init__(self):
    self.scalars = []

  def write_scalars(self, step, scalars):
    self.scalars.append((step, dict(scalars)))


def _trained_state(steps=3):
  state = train.create_train_state(
      models.create_model('cnn', 10),
      optimizers.create_optimizer('sgd', 0.05, 0.9), (28, 28, 1), 0)
  images, labels = _fixed_batch()
  for _ in range(steps):
    state = jax.jit(train.train_step)(state, images, labels)
  return state


def test_log_train_window_writes_every_metric_and_starts_a_new_window():
  state, writer = _trained_state(), RecordingWriter()
  expected = {f'train_{k}': float(v)
              for k, v in state.window_metrics.compute().items()}
  state = train.log_train_window(writer, state, 3, 0.05, 123.0,
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
  state = train.end_epoch(writer, state, step, 4,
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
  progress = train.Progress(history=[{'step': 4}], train_seconds=2.0,
                            earlier_wall_seconds=5.0)
  meta = progress.meta({'format': 2}, default.get_config())
  again = train.Progress.from_meta(json.loads(json.dumps(meta)))
  assert again.history == [{'step': 4}] and again.train_seconds == 2.0
  assert again.earlier_wall_seconds >= 5.0
  assert train.Progress.from_meta(None).history == []


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
  monkeypatch.setattr(input_pipeline, '_network_reachable',
                      lambda *a, **k: False)
  config = default.get_config()
  config.num_epochs = 1
  config.batch_size = 8
  with tfds.testing.mock_data(num_examples=8):
    summary = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert summary['final_step'] == 1 and len(summary['history']) == 1


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
  with pytest.raises(train.Preempted, match='stopped by SIGTERM at step 30'):
    run(small_data_dir, workdir)
  assert conftest.checkpoint_steps(workdir)[-1] == 30
  monkeypatch.delenv('TRAINER_FAULT')
  run(small_data_dir, workdir)
  conftest.assert_same_run(workdir, reference, TOTAL_STEPS)


def test_preempted_between_accumulated_steps_resumes_bitwise(
    tmp_path, small_data_dir, monkeypatch):
  # Stopped after the first of two accumulated steps: the partial gradient
  # sum lives in the optimizer state (optax.MultiSteps) and is restored.
  accumulate = {'grad_accum_steps': 2, 'num_train_steps': 40,
                'lr_schedule': 'cosine'}
  reference, workdir = str(tmp_path / 'r'), str(tmp_path / 'w')
  run(small_data_dir, reference, **accumulate)
  monkeypatch.setenv('TRAINER_FAULT', 'term:step:33')
  with pytest.raises(train.Preempted, match='at step 33'):
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
  with workdir_lock.hold(workdir):
    with pytest.raises(workdir_lock.WorkdirBusy,
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
  assert conftest.checkpoint_steps(workdir)[-1] < bad_step
  _, state = conftest.final_state(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))


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
                num_train_steps=72, max_checkpoints_to_keep=1)
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
  config = inference.load_config(workdir)
  report = inference.evaluate_checkpoint(config, workdir, 'best',
                                         'validation')
  assert report['split'] == 'validation' and report['examples'] == 64
  assert report['accuracy'] == pytest.approx(best['validation_accuracy'],
                                             abs=1e-6)
  assert 'on 64 validation examples' in inference.format_report(report)


def test_image_folder_streamed_and_resumed_equals_in_memory(tmp_path,
                                                            monkeypatch):
  folder = conftest.make_image_folder(str(tmp_path / 'images'),
                                      num_train=16, num_test=4)
  # 48 images, 6 steps per epoch at batch 8; 12 steps.
  config = functools.partial(conftest.tiny_config, folder, dataset='custom',
                             num_train_steps=12, eval_batch_size=8)
  memory, streamed = str(tmp_path / 'memory'), str(tmp_path / 'streamed')
  train.train_and_evaluate(config(data_loading='memory'), memory)
  monkeypatch.setenv('TRAINER_FAULT', 'term:step:4')
  with pytest.raises(train.Preempted):
    train.train_and_evaluate(config(data_loading='stream'), streamed)
  monkeypatch.delenv('TRAINER_FAULT')
  summary = train.train_and_evaluate(config(data_loading='stream'), streamed)
  conftest.assert_same_run(streamed, memory, 12)
  info = json.load(open(os.path.join(streamed, 'dataset.json')))
  assert info['class_names'] == ['cat', 'dog', 'fox']
  assert info['image_shape'] == [12, 10, 3]
  assert 'decoded per batch' in info['source']
  assert summary['test_accuracy'] > 0


def test_process_age_counts_from_this_process_start():
  before = train.process_age_seconds()
  time.sleep(0.2)
  after = train.process_age_seconds()
  assert 0.15 < after - before < 2.0
  # psutil's figure rests on a boot time in whole seconds: within 1 s.
  coarse = time.time() - psutil.Process().create_time()
  fine = train._age_from_proc()
  assert 0 < fine and abs(fine - coarse) < 1.05
  # In hundredths of a second, the kernel's clock ticks (psutil's is finer).
  assert abs(fine * 100 - round(fine * 100)) < 1e-6
  assert abs(train.process_age_seconds() - fine) < 0.05
