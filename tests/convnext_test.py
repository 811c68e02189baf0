"""Tests of convnext.py and of pretrained.py's timm ConvNeXt route:
parameter counts, timm's keys, logits parity with PyTorch, the errors, the
small-image stem, stochastic depth.

The torch side is tests/torch_reference.py (timm's ConvNeXt in plain
PyTorch, its keys and shapes checked against
tests/fixtures/timm_vit_convnext_state_dicts.json, read from timm's source);
the helpers come from tests/vit_test.py.
"""

import functools
import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrained_test import assert_logits_close
from pretrained_test import mismatch_lines
from pretrained_test import require
from vit_test import build_reference
from vit_test import check_drop_path
from vit_test import drop_path_rates_seen
from vit_test import fixture_keys
from vit_test import forward
from vit_test import num_params
from vit_test import template
from vit_test import variable_shapes
from vit_test import zeros_state_dict
import convnext
import models
import pretrained
import warm_start

# Parameters at 224x224x3 and 1000 classes. convnext_tiny: timm's and
# torchvision's published count. convnext_atto: timm's model card rounds
# to 3.7 M; 3,695,520 is the count of the layout in timm's source (the
# fixture's keys and shapes, and torch_reference's module). The 3,708,400
# once quoted for it is 12,880 more: the size of stages.1.downsample.
PUBLISHED_PARAMS = {'convnext_atto': 3_695_520, 'convnext_tiny': 28_589_128}
# 64 px: stage 3 runs at 2x2.
PARITY_IMAGE = 64


@pytest.fixture(scope='module')
def references(tmp_path_factory):
  """arch -> a random reference at PARITY_IMAGE px (built once)."""
  folder = tmp_path_factory.mktemp('convnext')
  out = {}

  def build(arch):
    if arch not in out:
      out[arch] = build_reference(folder, arch, PARITY_IMAGE, seed=len(out))
    return out[arch]
  return build


@pytest.mark.parametrize('arch', ['convnext_atto', 'convnext_tiny'])
def test_parameter_counts(arch):
  assert num_params(variable_shapes(arch)) == PUBLISHED_PARAMS[arch]


@pytest.mark.parametrize('arch', ['convnext_atto', 'convnext_tiny'])
def test_reference_has_timms_keys_and_parameter_count(arch):
  require('torch')
  torch_reference = importlib.import_module('torch_reference')
  model = torch_reference.create_timm(arch)
  assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()
          ] == fixture_keys(arch)
  assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[arch]


@pytest.mark.parametrize('arch', ['convnext_atto', 'convnext_tiny'])
def test_every_timm_key_maps_one_to_one(arch):
  """convnext_atto's fc1/fc2 are 1x1 convolutions (out, in, 1, 1) in timm
  (conv_mlp), convnext_tiny's Linear layers: both load into Dense."""
  state = zeros_state_dict(arch)
  assert state['stages.0.blocks.0.mlp.fc1.weight'].ndim == (
      4 if arch == 'convnext_atto' else 2)
  variables, report = pretrained.to_flax(state, arch, template(arch),
                                         exclude_regexes=())
  assert len(report.loaded) == len(jax.tree.leaves(variables))
  assert not report.left_new and not report.ignored and not report.notes
  assert report.loaded_params == report.total_params == PUBLISHED_PARAMS[arch]


@pytest.mark.parametrize('arch', [
    'convnext_atto',
    # Another few seconds of compiling: in make test-all and CI.
    pytest.param('convnext_tiny', marks=pytest.mark.slow)])
@pytest.mark.parametrize('kind', ['safetensors', 'pth'])
def test_logits_match_pytorch(references, arch, kind):
  reference = references(arch)
  variables, report = pretrained.load_pretrained(
      reference['files'][kind], arch, template(arch, PARITY_IMAGE),
      exclude_regexes=())
  assert not report.left_new and not report.notes
  got = forward(arch)(variables, reference['images'])
  assert_logits_close(got, reference['logits'])


def test_default_leaves_only_the_heads_fc_new(references):
  reference = references('convnext_atto')
  fresh = template('convnext_atto', PARITY_IMAGE, fill=0.5)
  variables, report = pretrained.load_pretrained(
      reference['files']['safetensors'], 'convnext_atto', fresh)
  reason = r'excluded by ^head\.fc\.'
  assert report.left_new == {'params/head/fc/bias': reason,
                             'params/head/fc/kernel': reason}
  # The head's LayerNorm is pretrained: loaded.
  np.testing.assert_array_equal(variables['params']['head']['norm']['scale'],
                                reference['state']['head.norm.weight'])
  np.testing.assert_array_equal(variables['params']['head']['fc']['kernel'],
                                fresh['params']['head']['fc']['kernel'])
  np.testing.assert_array_equal(
      variables['params']['stages_3']['blocks_1']['gamma'],
      reference['state']['stages.3.blocks.1.gamma'])


def test_head_with_other_classes_is_left_new(references):
  reference = references('convnext_atto')
  variables, report = pretrained.load_pretrained(
      reference['files']['safetensors'], 'convnext_atto',
      template('convnext_atto', PARITY_IMAGE, num_classes=10, fill=0.5),
      exclude_regexes=())
  assert set(report.left_new) == {'params/head/fc/kernel',
                                  'params/head/fc/bias'}
  assert 'left new: head/fc (1000 classes in the weights, 10 in the model)' \
      in report.summary()
  np.testing.assert_array_equal(
      variables['params']['stages_2']['blocks_5']['mlp']['fc1']['kernel'],
      reference['state']['stages.2.blocks.5.mlp.fc1.weight'][:, :, 0, 0].T)


def test_convnext_tiny_into_atto_lists_every_mismatch_in_one_error():
  atto = dict(fixture_keys('convnext_atto'))
  tiny = dict(fixture_keys('convnext_tiny'))
  with pytest.raises(pretrained.PretrainedError) as error:
    pretrained.to_flax(zeros_state_dict('convnext_tiny'), 'convnext_atto',
                       template('convnext_atto'))
  lines = mismatch_lines(error.value)
  # Tiny has every atto name and more blocks (3, 3, 9, 3 against 2, 2, 6, 2),
  # all wider.
  assert 'missing' not in lines
  assert set(lines['unused']) == {
      k for k in tiny if k not in atto and not k.startswith('head.fc.')}
  assert set(lines['wrong shape']) == {
      k for k in atto if not k.startswith('head.fc.')}
  assert 'stem.0.weight 96x3x4x4 (model 40x3x4x4)' in str(error.value)


def stem_shape(stem_stride, image=32):
  model = models.create_model('convnext_atto', 10, stem_stride=stem_stride)
  variables = jax.eval_shape(functools.partial(
      model.init, capture_intermediates=lambda m, _: m.name == 'stem_0'),
                             jax.random.key(0), jnp.zeros((1, image, image, 3)))
  return variables['intermediates']['stem_0']['__call__'][0].shape


@pytest.mark.parametrize('stem_stride', [1, 2, 4])
def test_small_image_stem_keeps_the_kernel_and_takes_timms_weights(
    stem_stride):
  assert stem_shape(stem_stride) == (1, 32 // stem_stride, 32 // stem_stride,
                                     40)
  variables, report = pretrained.to_flax(
      zeros_state_dict('convnext_atto'), 'convnext_atto',
      template('convnext_atto', 32, stem_stride=stem_stride))
  assert variables['params']['stem_0']['kernel'].shape == (4, 4, 3, 40)
  assert set(report.left_new) == {'params/head/fc/bias',
                                  'params/head/fc/kernel'}


@pytest.mark.parametrize('kwargs,message', [
    ({'stem_stride': 3}, 'stem_stride must be one of 1, 2, 4, got 3'),
    ({'depths': (2, 2)}, 'must have one entry per stage'),
    ({'drop_path_rate': -0.1}, 'drop_path_rate must be in [0, 1), got -0.1'),
])
def test_options_are_refused_when_built(kwargs, message):
  with pytest.raises(ValueError) as error:
    convnext.ConvNeXt(num_classes=10, **kwargs)
  assert message in str(error.value)


def small_convnext(**kwargs):
  return convnext.ConvNeXt(depths=(1, 2), dims=(8, 16), num_classes=10,
                           **kwargs)


def test_drop_path_follows_the_rng_and_eval_ignores_it():
  check_drop_path(small_convnext, jax.random.normal(jax.random.key(1),
                                                    (8, 16, 16, 3)))


def test_drop_path_rates_rise_linearly_over_all_blocks():
  seen = drop_path_rates_seen(
      models.create_model('convnext_atto', 10, drop_path_rate=0.11),
      (1, 32, 32, 3))
  np.testing.assert_allclose(seen, np.linspace(0, 0.11, 12), atol=1e-12)


def test_bfloat16_computes_in_bfloat16_with_float32_parameters():
  model = small_convnext(dtype='bfloat16')
  x = jnp.ones((2, 16, 16, 3))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert {v.dtype for v in jax.tree.leaves(shapes)} == {np.dtype(np.float32)}
  assert jax.eval_shape(model.apply, shapes, x).dtype == jnp.bfloat16


def test_warm_start_head_is_the_fc():
  head = warm_start.HEADS['convnext_atto']
  assert [p for p in models.parameter_paths(models.create_model(
      'convnext_atto', 10)) if re.search(head, p)] == ['head/fc/bias',
                                                        'head/fc/kernel']
