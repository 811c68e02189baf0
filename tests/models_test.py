"""Tests for models.py: parameter counts, train/eval behaviour, precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from vit_test import check_drop_path
from vit_test import drop_path_rates_seen


def num_params(model, shape):
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                             jnp.ones(shape))
  return sum(x.size for x in jax.tree.leaves(variables['params']))


@pytest.mark.parametrize('name,classes,shape,count', [
    ('cnn', 10, (1, 28, 28, 1), 824_458),         # The Flax quick start.
    ('resnet18', 1000, (1, 224, 224, 3), 11_689_512),  # torchvision's.
    ('resnet50', 1000, (1, 224, 224, 3), 25_557_032),  # torchvision's.
    ('resnet34', 1000, (1, 224, 224, 3), 21_797_672),  # torchvision's.
    ('resnet20', 10, (1, 32, 32, 3), 272_474),    # He et al.: 0.27 M.
    # 2x2x1x24 stem, 3x3 convs 24-64-64-256-256-256-256, a BatchNorm after
    # each (2 parameters per channel), and a 256x10 Dense with bias.
    ('convnet', 10, (1, 28, 28, 1), 1_972_634),
])
def test_parameter_counts(name, classes, shape, count):
  assert num_params(models.create_model(name, classes), shape) == count


def test_small_image_stem_keeps_resolution():
  model = models.create_model('resnet18', 10, stem='small')
  variables = model.init(jax.random.PRNGKey(0), jnp.ones((1, 28, 28, 1)))
  kernel = variables['params']['Conv_0']['kernel']
  assert kernel.shape == (3, 3, 1, 64)
  out = model.apply(variables, jnp.ones((2, 28, 28, 1)))
  assert out.shape == (2, 10)


def _resnet20_variables():
  model = models.create_model('resnet20', 10, dropout_rate=0.5)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
  return model, model.init(jax.random.PRNGKey(0), x), x


def test_batch_stats_change_in_train_and_not_in_eval():
  model, variables, x = _resnet20_variables()
  _, updated = model.apply(variables, x, train=True, mutable=['batch_stats'],
                           rngs={'dropout': jax.random.PRNGKey(2)})
  before = jax.tree.leaves(variables['batch_stats'])
  after = jax.tree.leaves(updated['batch_stats'])
  assert len(before) == len(after) == 2 * 21  # mean, var of 21 norms.
  assert all(not np.array_equal(a, b) for a, b in zip(before, after))
  _, same = model.apply(variables, x, train=False, mutable=['batch_stats'])
  for a, b in zip(before, jax.tree.leaves(same['batch_stats'])):
    np.testing.assert_array_equal(a, b)


def test_dropout_masks_follow_the_rng_and_eval_has_none():
  model, variables, x = _resnet20_variables()

  def train_out(seed):
    return model.apply(variables, x, train=True, mutable=['batch_stats'],
                       rngs={'dropout': jax.random.PRNGKey(seed)})[0]

  np.testing.assert_array_equal(train_out(3), train_out(3))
  assert not np.array_equal(train_out(3), train_out(4))
  np.testing.assert_array_equal(model.apply(variables, x),
                                model.apply(variables, x))


def test_resnet_drop_path_follows_the_rng_and_eval_ignores_it():
  check_drop_path(lambda **kwargs: models.create_model('resnet20', 10,
                                                       **kwargs),
                  jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1)))


def test_resnet_drop_path_rates_rise_linearly_over_all_blocks():
  seen = drop_path_rates_seen(
      models.create_model('resnet20', 10, drop_path_rate=0.2), (1, 28, 28, 1))
  np.testing.assert_allclose(seen, np.linspace(0, 0.2, 9), atol=1e-12)
  with pytest.raises(ValueError, match=r'drop_path_rate must be in \[0, 1\)'):
    models.create_model('resnet20', 10, drop_path_rate=1.0)


def test_bfloat16_computes_in_bfloat16_with_float32_parameters():
  model = models.create_model('cnn', 10, dtype='bfloat16')
  variables = model.init(jax.random.PRNGKey(0), jnp.ones((1, 28, 28, 1)))
  assert {x.dtype for x in jax.tree.leaves(variables)} == {np.dtype(np.float32)}
  assert model.apply(variables, jnp.ones((2, 28, 28, 1))).dtype == jnp.bfloat16


def test_unknown_model_and_option_are_refused_with_accepted_names():
  with pytest.raises(ValueError, match=r"unknown model 'resnet'.*cnn"):
    models.create_model('resnet', 10)
  with pytest.raises(ValueError, match=r"takes no option 'depth'; accepted: "
                                       r"bn_momentum, drop_path_rate, "
                                       r"dropout_rate, dtype"):
    models.create_model('resnet20', 10, depth=3)


@pytest.mark.parametrize('kwargs,message', [
    ({'stem': 'big'}, "unknown stem 'big'; accepted: imagenet, small"),
    ({'widths': (16, 32)}, 'must give one positive width per stage (4'),
    ({'widths': (16, 0, 64)}, 'must give one positive width per stage'),
    ({'stem_width': 0}, 'stem_width must be a positive integer, got 0'),
    ({'bn_momentum': 1.5}, 'bn_momentum must be in [0, 1), got 1.5'),
])
def test_resnet_options_are_refused_when_built(kwargs, message):
  with pytest.raises(ValueError) as error:
    models.create_model('resnet18', 10, **kwargs)
  assert message in str(error.value)


@pytest.mark.parametrize('hidden', [0, -3, 2.5])
def test_mlp_width_is_refused_when_built(hidden):
  with pytest.raises(ValueError, match='hidden must be a positive integer'):
    models.create_model('mlp', 10, hidden=hidden)


def test_convnet_stages_halve_the_resolution_and_update_their_norms():
  model = models.create_model('convnet', 10, widths=(8, 16),
                              convs_per_stage=3)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  # The stem, then 3 convolutions in each of the 2 stages.
  assert len(variables['batch_stats']) == 7
  # 28 -> 27 (2x2 VALID stem) -> 13 -> 6; the classifier sees 16 channels.
  _, state = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert variables['params']['Dense_0']['kernel'].shape == (16, 10)
  before = jax.tree.leaves(variables['batch_stats'])
  after = jax.tree.leaves(state['batch_stats'])
  assert all(not np.array_equal(a, b) for a, b in zip(before, after))
  assert model.apply(variables, x).shape == (4, 10)


@pytest.mark.parametrize('kwargs,message', [
    ({'widths': ()}, 'widths () must be one or more positive integers'),
    ({'widths': (64, 0)}, 'widths (64, 0) must be one or more positive'),
    ({'convs_per_stage': 0}, 'convs_per_stage must be a positive integer, '
                             'got 0'),
    ({'stem_width': -1}, 'stem_width must be a positive integer, got -1'),
    ({'bn_momentum': 1.0}, 'bn_momentum must be in [0, 1), got 1.0'),
])
def test_convnet_options_are_refused_when_built(kwargs, message):
  with pytest.raises(ValueError) as error:
    models.create_model('convnet', 10, **kwargs)
  assert message in str(error.value)
