"""Tests for steps.py: the state, the train/eval steps, EMA, metrics."""

import functools
import re

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import data_sources
import models
import optimizers
import steps


def test_compute_steps():
  assert steps.compute_steps(60000, 32, 10, -1, 0.5) == (1875, 18750, 938)
  assert steps.compute_steps(60000, 32, 10, 100, 0) == (1875, 100, 0)
  with pytest.raises(data_sources.DataError,
                     match='batch_size 32 is larger than the training set'):
    steps.compute_steps(10, 32, 1, -1, 0)


def _fixed_batch():
  rng = np.random.default_rng(0)
  images = 0.2 * rng.random((16, 28, 28, 1), dtype=np.float32)
  labels = rng.integers(0, 10, 16).astype(np.int32)
  for i, label in enumerate(labels):  # Learnable: a band per class.
    images[i, 2 * label:2 * label + 2] = 1.0
  return jnp.asarray(images), jnp.asarray(labels)


def test_train_step_lowers_loss_on_a_fixed_batch():
  model = models.create_model('cnn', 10)
  state = steps.create_train_state(
      model, optimizers.create_optimizer('sgd', 0.05, 0.9, 0), (28, 28, 1), 0)
  step = jax.jit(steps.train_step)
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
  state = steps.create_train_state(
      NanGradient(), optimizers.create_optimizer('sgd', 0.01, 0.0, 0),
      (28, 28, 1), 0)
  images, labels = _fixed_batch()
  step = jax.jit(steps.train_step)
  state = step(state, images, labels)
  assert np.isfinite(float(state.window_metrics.compute()['loss']))
  assert int(state.nonfinite_step) == 1
  state = step(state, images, labels)
  assert int(state.nonfinite_step) == 1  # The first bad step is kept.


def test_nonfinite_parameters_with_finite_gradients_are_caught():
  # An update that overflows (scaled by inf) from finite loss and gradients.
  tx = optax.chain(optax.sgd(0.01), optax.scale(float('inf')))
  state = steps.create_train_state(models.create_model('mlp', 10), tx,
                                   (28, 28, 1), 0)
  images, labels = _fixed_batch()
  state = jax.jit(steps.train_step)(state, images, labels)
  assert np.isfinite(float(state.window_metrics.compute()['loss']))
  assert int(state.nonfinite_step) == 1


class DivergingStatistics(nn.Module):
  """Finite loss and gradients, but running statistics that overflow (as a
  BatchNorm momentum out of range makes them)."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    mean = self.variable('batch_stats', 'mean', jnp.zeros, ())
    if train:
      mean.value = mean.value * 1e30 + 1e30 * x.mean()
    return nn.Dense(10)(x.reshape((x.shape[0], -1)))


def test_nonfinite_model_state_is_caught():
  state = steps.create_train_state(
      DivergingStatistics(), optimizers.create_optimizer('sgd', 0.01, 0.0),
      (28, 28, 1), 0)
  images, labels = _fixed_batch()
  step = jax.jit(steps.train_step)
  state = step(step(state, images, labels), images, labels)
  assert np.isfinite(float(state.window_metrics.compute()['loss']))
  assert not np.isfinite(float(state.model_state['batch_stats']['mean']))
  assert int(state.nonfinite_step) == 2


def test_eval_step_masks_padding():
  model = models.create_model('cnn', 10)
  state = steps.create_train_state(
      model, optimizers.create_optimizer('sgd', 0.01, 0.9, 0), (28, 28, 1), 0)
  images, labels = _fixed_batch()
  mask = jnp.arange(16) < 5
  masked = steps.eval_step(state, images, labels, mask)
  first5 = steps.eval_step(state, images[:5], labels[:5], jnp.ones(5, bool))
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
  fast = steps.create_train_state(model, tx, (28, 28, 1), 3, ema=True)
  default_level = jax.jit(steps.state_initializer(
      model, tx, (28, 28, 1), ema=True))(jax.random.PRNGKey(3))
  assert steps.RUN_ONCE_COMPILER_OPTIONS
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(default_level),
                  strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def _resnet_state(**kwargs):
  model = models.create_model('resnet20', 10, dropout_rate=0.5)
  tx = optimizers.create_optimizer('sgd', 0.05, 0.9)
  return steps.create_train_state(model, tx, (28, 28, 1), 0, **kwargs)


# A ResNet step compiled (about 9 s): make test-all and CI.
@pytest.mark.slow
def test_train_step_updates_batch_stats_and_draws_dropout_per_step():
  state = _resnet_state()
  images, labels = _fixed_batch()
  step = jax.jit(steps.train_step)
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
  first = steps.eval_step(state, images, labels, jnp.ones(16, bool))
  second = steps.eval_step(state, images, labels, jnp.ones(16, bool))
  assert first.compute()['loss'] == second.compute()['loss']


def test_ema_follows_its_formula():
  state = _resnet_state(ema=True)
  images, labels = _fixed_batch()
  step = jax.jit(functools.partial(steps.train_step, ema_decay=0.9))
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
  with_ema = steps.eval_step(after, images, labels, jnp.ones(16, bool),
                             use_ema=True)
  live = steps.eval_step(after, images, labels, jnp.ones(16, bool))
  assert with_ema.compute()['loss'] != live.compute()['loss']


def test_ema_with_gradient_accumulation_moves_only_on_updates():
  state = steps.create_train_state(
      models.create_model('cnn', 10),
      optimizers.create_optimizer('sgd', 0.05, 0.9, grad_accum_steps=2),
      (28, 28, 1), 0, ema=True)
  images, labels = _fixed_batch()
  step = jax.jit(functools.partial(steps.train_step, ema_decay=0.9))
  first = step(state, images, labels)  # A micro-step: nothing moves.
  for ema, old in zip(jax.tree.leaves(first.ema_variables),
                      jax.tree.leaves(state.ema_variables)):
    np.testing.assert_array_equal(ema, old)
  second = step(first, images, labels)  # Update 1: the mean of both.
  for ema, old, new in zip(jax.tree.leaves(second.ema_variables),
                           jax.tree.leaves(state.eval_variables(False)),
                           jax.tree.leaves(second.eval_variables(False))):
    np.testing.assert_allclose(ema, 0.5 * old + 0.5 * new, rtol=1e-6,
                               atol=1e-7)
  assert not np.array_equal(jax.tree.leaves(second.params)[0],
                            jax.tree.leaves(state.params)[0])


def test_label_smoothing_follows_its_formula():
  logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
  labels = jnp.array([0, 2])
  a = 0.1
  log_p = jax.nn.log_softmax(logits)
  targets = (1 - a) * jax.nn.one_hot(labels, 3) + a / 3
  expected = -(targets * log_p).sum(-1)
  np.testing.assert_allclose(steps.cross_entropy(logits, labels, a),
                             expected, rtol=1e-6)
  np.testing.assert_allclose(steps.cross_entropy(logits, labels),
                             -log_p[jnp.arange(2), labels], rtol=1e-6)


def test_top5_accuracy_only_with_more_than_5_classes():
  assert 'top5_accuracy' in steps.create_metrics(10).__annotations__
  assert 'top5_accuracy' not in steps.create_metrics(5).__annotations__
  logits = jnp.array([[9., 8, 7, 6, 5, 4, 3], [9., 8, 7, 6, 5, 4, 3]])
  metrics = steps.create_metrics(7).single_from_model_output(
      loss=jnp.zeros(2), logits=logits, labels=jnp.array([4, 5]))
  values = metrics.compute()
  assert float(values['top5_accuracy']) == 0.5
  assert float(values['accuracy']) == 0.0


def test_bfloat16_compute_keeps_float32_parameters_and_state():
  model = models.create_model('cnn', 10, dtype='bfloat16')
  state = steps.create_train_state(
      model, optimizers.create_optimizer('sgd', 0.05, 0.9), (28, 28, 1), 0)
  images, labels = _fixed_batch()
  state = jax.jit(steps.train_step)(state, images, labels)
  dtypes = {x.dtype for x in jax.tree.leaves((state.params,
                                               state.opt_state))}
  assert dtypes == {np.dtype(np.float32)}
  assert state.window_metrics.compute()['loss'].dtype == np.float32


def _trained_resnet(freeze='', lr_multipliers='', learning_rate=0.05,
                    momentum=0.9, num_steps=3):
  model = models.create_model('resnet18', 10, widths=(4, 4, 8, 8),
                              stem='small', stem_width=4)
  tx, _ = steps.create_optimizer_and_schedule(
      'sgd', learning_rate, 'constant', num_steps, 0, momentum=momentum,
      weight_decay=1e-3, grad_clip_norm=1.0, freeze=freeze,
      lr_multipliers=lr_multipliers)
  state = steps.create_train_state(model, tx, (28, 28, 1), 0)
  start = jax.tree.map(np.asarray, (state.params, state.model_state))
  images, labels = _fixed_batch()
  step = jax.jit(functools.partial(steps.train_step, freeze=freeze))
  for _ in range(num_steps):
    state = step(state, images, labels)
  return start, (state.params, state.model_state)


def _by_path(tree):
  return {models.parameter_path(p): np.asarray(v) for p, v in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_frozen_parameters_and_their_statistics_stay_bitwise():
  freeze = r'^(Conv_0|BatchNorm_0|BasicBlock_0)/'
  (params0, state0), (params, state) = _trained_resnet(freeze=freeze)
  for before, after, collection in ((params0, params, False),
                                    (state0, state, True)):
    before, after = _by_path(before), _by_path(after)
    # A statistics path starts with its collection: batch_stats/Conv_0/...
    frozen = [p for p in before if re.search(
        freeze, p.split('/', 1)[1] if collection else p)]
    assert frozen and len(frozen) < len(before)
    for path in before:
      same = np.array_equal(before[path], after[path])
      assert same == (path in frozen), path


def test_a_frozen_batchnorm_normalizes_by_its_running_statistics():
  # With only the head trained, the frozen backbone computes the same
  # features in training as in evaluation: its BatchNorm layers use their
  # running statistics, not the batch's.
  model = models.create_model('resnet18', 10, widths=(4, 4, 8, 8),
                              stem='small', stem_width=4)
  variables = model.init(jax.random.PRNGKey(0), jnp.ones((1, 28, 28, 1)))
  images, _ = _fixed_batch()
  with nn.intercept_methods(steps._frozen_norms('^(?!Dense)')):
    train_logits, _ = model.apply(variables, images, train=True,
                                  mutable=['batch_stats'])
  eval_logits = model.apply(variables, images, train=False)
  np.testing.assert_array_equal(train_logits, eval_logits)


# About 4 s: make test-all and CI.
@pytest.mark.slow
def test_a_multiplier_scales_the_learning_rate():
  # Plain SGD: the update is linear in the learning rate.
  _, (half, _) = _trained_resnet(lr_multipliers='.=0.5', momentum=0.0,
                                 num_steps=1)
  _, (slow, _) = _trained_resnet(learning_rate=0.025, momentum=0.0,
                                 num_steps=1)
  for path, value in _by_path(half).items():
    np.testing.assert_allclose(value, _by_path(slow)[path], rtol=1e-6,
                               atol=1e-7, err_msg=path)
