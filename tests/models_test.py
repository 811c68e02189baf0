"""Tests for models.py."""

import jax
import jax.numpy as jnp
import pytest

import models


def _num_params(model, shape):
  params = model.init(jax.random.PRNGKey(0), jnp.ones(shape))['params']
  return sum(x.size for x in jax.tree.leaves(params))


def test_cnn_has_quick_start_parameter_count():
  assert _num_params(models.CNN(num_classes=10), (1, 28, 28, 1)) == 824_458


def test_cnn_output_shape():
  model = models.create_model('cnn', num_classes=7)
  x = jnp.zeros((3, 28, 28, 1))
  params = model.init(jax.random.PRNGKey(0), x)
  assert model.apply(params, x).shape == (3, 7)


def test_unknown_model_is_refused_with_accepted_names():
  with pytest.raises(ValueError, match=r"unknown model 'resnet'.*cnn"):
    models.create_model('resnet', 10)
