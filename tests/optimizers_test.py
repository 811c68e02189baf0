"""Tests for optimizers.py: each optimizer's state, the decay mask, clipping,
accumulation and the schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
import optimizers

PARAMS = {'Conv_0': {'kernel': jnp.ones((3, 3, 1, 2)), 'bias': jnp.ones(2)},
          'BatchNorm_0': {'scale': jnp.ones(2), 'bias': jnp.ones(2)}}


@pytest.mark.parametrize('name,state_leaves', [
    ('sgd', 4), ('momentum', 4), ('adam', 9), ('adamw', 9)])
def test_every_optimizer_builds_its_state(name, state_leaves):
  opt_state = optimizers.create_optimizer(name, 0.1, 0.9).init(PARAMS)
  # Momentum: a trace per parameter; Adam: a step count, mu and nu.
  assert len(jax.tree.leaves(opt_state)) == state_leaves


def test_plain_sgd_has_no_state():
  assert jax.tree.leaves(
      optimizers.create_optimizer('sgd', 0.1, 0.0).init(PARAMS)) == []


def test_decay_mask_skips_biases_and_norm_parameters():
  assert optimizers.decay_mask(PARAMS) == {
      'Conv_0': {'kernel': True, 'bias': False},
      'BatchNorm_0': {'scale': False, 'bias': False}}


@pytest.mark.parametrize('name', optimizers.TAKE_WEIGHT_DECAY)
def test_weight_decay_moves_only_kernels(name):
  tx = optimizers.create_optimizer(name, 0.1, 0.9, weight_decay=0.5)
  zero = jax.tree.map(jnp.zeros_like, PARAMS)
  updates, _ = tx.update(zero, tx.init(PARAMS), PARAMS)
  assert float(jnp.abs(updates['Conv_0']['kernel']).min()) > 0
  for leaf in (updates['Conv_0']['bias'], updates['BatchNorm_0']['scale'],
               updates['BatchNorm_0']['bias']):
    np.testing.assert_array_equal(leaf, 0.0)


def test_adam_refuses_weight_decay():
  with pytest.raises(optimizers.OptimizerError, match='takes no weight_decay.*those that do: sgd, momentum, adamw'):
    optimizers.create_optimizer('adam', 0.1, weight_decay=0.1)


def test_gradient_clipping_bounds_the_global_norm():
  tx = optimizers.create_optimizer('sgd', 1.0, 0.0, grad_clip_norm=0.5)
  grads = jax.tree.map(lambda p: 10 * jnp.ones_like(p), PARAMS)
  updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
  assert float(optax.global_norm(updates)) == pytest.approx(0.5, rel=1e-6)


def test_accumulation_applies_the_mean_every_k_steps():
  tx = optimizers.create_optimizer('sgd', 1.0, 0.0, grad_accum_steps=2)
  state = tx.init(PARAMS)
  one = jax.tree.map(jnp.ones_like, PARAMS)
  first, state = tx.update(one, state, PARAMS)
  second, state = tx.update(jax.tree.map(lambda g: 3 * g, one), state, PARAMS)
  np.testing.assert_array_equal(first['Conv_0']['kernel'], 0.0)
  np.testing.assert_array_equal(second['Conv_0']['kernel'], -2.0)


def test_schedules():
  lr = optimizers.create_learning_rate_fn('warmup_cosine', 0.1, 100, 10)
  assert float(lr(0)) == 0.0
  assert float(lr(10)) == pytest.approx(0.1)
  assert float(lr(100)) == pytest.approx(0.0, abs=1e-7)
  assert float(optimizers.create_learning_rate_fn('cosine', 0.1, 100, 0)(
      50)) == pytest.approx(0.05)
  assert float(optimizers.create_learning_rate_fn('constant', 0.1, 100, 0)(
      99)) == pytest.approx(0.1)
  assert float(optimizers.create_learning_rate_fn('plateau', 0.1, 100, 0)(
      99)) == pytest.approx(0.1)  # Its cuts are in the optimizer state.
  assert set(optimizers.LR_SCHEDULES) == {'constant', 'cosine',
                                          'warmup_cosine', 'plateau'}


def test_update_factors_follow_freeze_then_the_first_multiplier():
  rules = 'BasicBlock_[01]/=0.1,Dense=2,.=1'
  assert optimizers.update_factor('BasicBlock_0/Conv_0/kernel', '', rules) == 0.1
  assert optimizers.update_factor('Dense_0/kernel', '', rules) == 2.0
  assert optimizers.update_factor('Conv_0/kernel', '', rules) == 1.0
  assert optimizers.update_factor('Dense_0/kernel', 'Dense', rules) == 0.0


@pytest.mark.parametrize('freeze,multipliers,message', [
    ('layer1', '', "freeze 'layer1' matches no parameter of the model; "
                   "accepted: a regex over its parameter paths, e.g. "
                   "BasicBlock_0/"),
    ('(', '', "freeze '(' is not a regular expression"),
    ('', 'Dense=fast', "lr_multipliers item 'Dense=fast' is not "
                       "REGEX=FACTOR with a factor >= 0"),
    ('', 'Dense', "lr_multipliers item 'Dense' is not REGEX=FACTOR"),
    ('', 'Dense=-1', "lr_multipliers item 'Dense=-1' is not REGEX=FACTOR"),
    ('', 'fc=0.1', "lr_multipliers 'fc' matches no parameter"),
])
def test_bad_parameter_rules_are_named(freeze, multipliers, message):
  paths = models.parameter_paths(models.create_model('resnet18', 10))
  with pytest.raises(optimizers.OptimizerError) as e:
    optimizers.check_parameter_rules(freeze, multipliers, paths)
  assert message in str(e.value)
