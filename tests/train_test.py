"""Tests for train.py: the step, the schedules, and whole runs with resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

import conftest
import input_pipeline
import models
import train
from configs import default


def tiny_config(**overrides):
  config = default.get_config()
  config.batch_size = 8
  config.eval_batch_size = 16
  config.num_train_steps = 12
  config.log_every_steps = 4
  config.checkpoint_every_steps = 4
  config.update(overrides)
  return config


def test_compute_steps():
  assert train.compute_steps(60000, 32, 10, -1, 0.5) == (1875, 18750, 938)
  assert train.compute_steps(60000, 32, 10, 100, 0) == (1875, 100, 0)
  with pytest.raises(train.ConfigError, match='larger than the training set'):
    train.compute_steps(10, 32, 1, -1, 0)


@pytest.mark.parametrize('name', train.OPTIMIZERS)
def test_every_optimizer_builds(name):
  tx = train.create_optimizer(name, 0.1, 0.9, 1e-4)
  assert tx.init({'w': jnp.ones(3)}) is not None


def test_warmup_cosine_schedule_shape():
  lr = train.create_learning_rate_fn('warmup_cosine', 0.1, 100, 10)
  assert float(lr(0)) == 0.0
  assert float(lr(10)) == pytest.approx(0.1)
  assert float(lr(100)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize('key,value,match', [
    ('optimizer', 'rmsprop', "unknown optimizer 'rmsprop'"),
    ('lr_schedule', 'step', "unknown lr_schedule 'step'"),
    ('model', 'vit', "unknown model 'vit'"),
    ('learning_rate', 0.0, 'learning_rate must be > 0'),
    ('batch_size', -4, 'batch_size must be > 0'),
    ('num_epochs', 0, 'num_epochs must be > 0'),
    ('num_train_steps', 0, 'num_train_steps must be -1'),
])
def test_validate_config_names_bad_value(key, value, match):
  config = default.get_config()
  config[key] = value
  with pytest.raises(train.ConfigError, match=match):
    train.validate_config(config, device_count=1)


def test_batch_size_must_divide_by_devices():
  config = default.get_config()
  config.batch_size = 30
  with pytest.raises(train.ConfigError, match='30 is not divisible by the 4'):
    train.validate_config(config, device_count=4)


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
      model, train.create_optimizer('sgd', 0.05, 0.9, 0), (28, 28, 1), 0)
  step = jax.jit(train.train_step)
  images, labels = _fixed_batch()
  losses = []
  for _ in range(10):
    state = step(state, images, labels)
    window = state.window_metrics.compute()
    losses.append(float(window['loss']))
    state = state.replace(window_metrics=train.TrainMetrics.empty())
  assert int(state.step) == 10
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  assert losses[-1] < 0.5 * losses[0]
  accuracy = float(state.epoch_metrics.compute()['accuracy'])
  assert 0.0 <= accuracy <= 1.0
  # The epoch accumulator counted every example of every step.
  assert int(state.epoch_metrics.accuracy.count) == 160


def test_eval_step_masks_padding():
  model = models.create_model('cnn', 10)
  state = train.create_train_state(
      model, train.create_optimizer('sgd', 0.01, 0.9, 0), (28, 28, 1), 0)
  images, labels = _fixed_batch()
  mask = jnp.arange(16) < 5
  masked = train.eval_step(state, images, labels, mask)
  first5 = train.eval_step(state, images[:5], labels[:5], jnp.ones(5, bool))
  assert int(masked.loss.count) == 5
  np.testing.assert_allclose(masked.compute()['loss'],
                             first5.compute()['loss'], rtol=1e-6)


def _restore_params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  step = manager.latest_step()
  state = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(step), 'state'))
  manager.close()
  return step, state['params']


def test_end_to_end_on_mock_tfds_with_resume(tmp_path, monkeypatch):
  # mock_data replaces tfds downloads; pretend the network is there.
  monkeypatch.setattr(input_pipeline, '_network_reachable',
                      lambda *a, **k: True)
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
  assert 0.0 <= summary['test_accuracy'] <= 1.0

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
  config = tiny_config(dataset='mnist', data_dir=idx_dir)
  assert train.train_and_evaluate(config, workdir) is not None
  path = os.path.join(workdir, 'summary.json')
  before = (open(path).read(), os.path.getmtime(path))
  assert train.train_and_evaluate(config, workdir) is None
  assert (open(path).read(), os.path.getmtime(path)) == before


@pytest.mark.slow
def test_one_real_epoch_of_fashion_mnist(tmp_path):
  assert os.path.isdir(conftest.FASHION_MNIST_DIR), (
      'needs `apt-get install dataset-fashion-mnist` (make data)')
  from configs import fashion_mnist  # pylint: disable=g-import-not-at-top
  config = fashion_mnist.get_config()
  config.num_epochs = 1
  summary = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert summary['test_accuracy'] >= 0.85, summary['test_accuracy']
