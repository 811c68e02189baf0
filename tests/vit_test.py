"""Tests of vit.py and of pretrained.py's timm ViT route: parameter counts,
timm's keys, logits parity with PyTorch, the errors, resampled position
embeddings, stochastic depth.

The torch side is tests/torch_reference.py (timm's VisionTransformer in
plain PyTorch, its keys and shapes checked against
tests/fixtures/timm_vit_convnext_state_dicts.json, read from timm's source).
The helpers here serve tests/convnext_test.py too.
"""

import functools
import importlib
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrained_test import assert_logits_close
from pretrained_test import assert_one_line
from pretrained_test import mismatch_lines
from pretrained_test import require
import pretrained_test
import layers
import models
import pretrained
import vit
import warm_start

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures',
                       'timm_vit_convnext_state_dicts.json')
# timm's parameter counts at 224x224x3 and 1000 classes (its model cards).
PUBLISHED_PARAMS = {'vit_tiny': 5_717_416, 'vit_small': 22_050_664,
                    'vit_base': 86_567_656}
TIMM_NAMES = {'vit_tiny': 'vit_tiny_patch16_224',
              'vit_small': 'vit_small_patch16_224'}
# A 4x4 grid of 16 px patches: every block attends over 17 tokens, and a
# patch order transposed against the position embeddings would show.
PARITY_IMAGE = 64


@functools.lru_cache(maxsize=None)
def fixture_keys(timm_name):
  with open(FIXTURE, encoding='utf-8') as f:
    return [(k, tuple(s)) for k, s in json.load(f)[timm_name]]


def zeros_state_dict(timm_name):
  """timm's keys and shapes for `timm_name`, all zeros: no torch needed."""
  return {k: np.zeros(s, np.float32) for k, s in fixture_keys(timm_name)}


@functools.lru_cache(maxsize=None)
def variable_shapes(arch, image=224, num_classes=1000, in_chans=3,
                    **kwargs):
  model = models.create_model(arch, num_classes, **kwargs)
  size = image if isinstance(image, tuple) else (image, image)
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, *size, in_chans)))


def template(arch, image=224, num_classes=1000, in_chans=3, fill=0.0,
             **kwargs):
  """A variables tree of the model's shapes filled with `fill` (a real
  init compiles; this does not)."""
  return jax.tree.map(lambda s: np.full(s.shape, fill, s.dtype),
                      variable_shapes(arch, image, num_classes, in_chans,
                                      **kwargs))


@functools.lru_cache(maxsize=None)
def forward(arch, **kwargs):
  model = models.create_model(arch, 1000, **kwargs)
  return jax.jit(lambda variables, x: model.apply(variables, x, train=False))


def build_reference(folder, timm_name, image, seed, **kwargs):
  """A randomised torch reference (torch_reference.create_timm(timm_name,
  **kwargs)), saved as .safetensors and .pth in `folder`, with three random
  `image`-pixel images and its eval-mode logits."""
  torch = require('torch')
  safetensors_torch = require('safetensors.torch')
  torch_reference = importlib.import_module('torch_reference')
  torch.manual_seed(seed)
  model = torch_reference.randomize_timm(
      torch_reference.create_timm(timm_name, **kwargs), seed=seed)
  images = torch.randn(3, 3, image, image)
  with torch.no_grad():
    logits = model(images).numpy()
  state = model.state_dict()
  stem = f'{timm_name}_{seed}'
  files = {'safetensors': str(folder / f'{stem}.safetensors'),
           'pth': str(folder / f'{stem}.pth')}
  safetensors_torch.save_file(state, files['safetensors'])
  torch.save(state, files['pth'])
  return dict(model=model, images=images.numpy().transpose(0, 2, 3, 1),
              logits=logits, files=files,
              state={k: v.numpy() for k, v in state.items()})


@pytest.fixture(scope='module')
def references(tmp_path_factory):
  """pool -> a random ViT-Ti reference at PARITY_IMAGE px (built once)."""
  folder = tmp_path_factory.mktemp('vit')
  out = {}

  def build(pool='token'):
    if pool not in out:
      out[pool] = build_reference(
          folder, 'vit_tiny_patch16_224', PARITY_IMAGE, seed=len(out),
          img_size=PARITY_IMAGE, global_pool=pool)
    return out[pool]
  return build


def num_params(tree):
  return sum(x.size for x in jax.tree.leaves(tree['params']))


@pytest.mark.parametrize('arch', ['vit_tiny', 'vit_small', 'vit_base'])
def test_parameter_counts_are_timms(arch):
  assert num_params(variable_shapes(arch)) == PUBLISHED_PARAMS[arch]


@pytest.mark.parametrize('arch', ['vit_tiny', 'vit_small'])
def test_reference_has_timms_keys_and_parameter_count(arch):
  require('torch')
  torch_reference = importlib.import_module('torch_reference')
  model = torch_reference.create_timm(TIMM_NAMES[arch])
  assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()
          ] == fixture_keys(TIMM_NAMES[arch])
  assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[arch]


def test_every_timm_key_maps_one_to_one():
  variables, report = pretrained.to_flax(
      zeros_state_dict('vit_tiny_patch16_224'), 'vit_tiny',
      template('vit_tiny'), exclude_regexes=())
  assert len(report.loaded) == len(jax.tree.leaves(variables))
  assert not report.left_new and not report.ignored and not report.notes
  assert report.loaded_params == report.total_params == (
      PUBLISHED_PARAMS['vit_tiny'])
  assert pretrained.timm_name(('params', 'blocks_3', 'attn', 'qkv',
                               'kernel')) == 'blocks.3.attn.qkv.weight'
  assert pretrained.timm_name(('params', 'cls_token')) == 'cls_token'


@pytest.mark.parametrize('pool,kind', [('token', 'safetensors'),
                                       ('token', 'pth'),
                                       ('avg', 'safetensors')])
def test_logits_match_pytorch(references, pool, kind):
  reference = references(pool)
  variables, report = pretrained.load_pretrained(
      reference['files'][kind], 'vit_tiny',
      template('vit_tiny', PARITY_IMAGE, pool=pool), exclude_regexes=())
  assert not report.left_new and not report.notes
  got = forward('vit_tiny', pool=pool)(variables, reference['images'])
  assert_logits_close(got, reference['logits'])


def test_default_leaves_the_head_new(references):
  reference = references()
  fresh = template('vit_tiny', PARITY_IMAGE, fill=0.5)
  variables, report = pretrained.load_pretrained(
      reference['files']['safetensors'], 'vit_tiny', fresh)
  np.testing.assert_array_equal(variables['params']['head']['kernel'],
                                fresh['params']['head']['kernel'])
  reason = r'excluded by ^head\.(weight|bias)$'
  assert report.left_new == {'params/head/bias': reason,
                             'params/head/kernel': reason}
  assert report.summary().endswith(f'; left new: head ({reason})')
  np.testing.assert_array_equal(variables['params']['cls_token'],
                                reference['state']['cls_token'])


def test_head_with_other_classes_is_left_new(references):
  reference = references()
  variables, report = pretrained.load_pretrained(
      reference['files']['safetensors'], 'vit_tiny',
      template('vit_tiny', PARITY_IMAGE, num_classes=10, fill=0.5),
      exclude_regexes=())
  assert set(report.left_new) == {'params/head/kernel', 'params/head/bias'}
  assert 'left new: head (1000 classes in the weights, 10 in the model)' in (
      report.summary())
  np.testing.assert_array_equal(
      variables['params']['blocks_11']['mlp']['fc2']['kernel'],
      reference['state']['blocks.11.mlp.fc2.weight'].T)


def test_vit_small_into_vit_tiny_lists_every_mismatch_in_one_error():
  small = dict(fixture_keys('vit_small_patch16_224'))
  with pytest.raises(pretrained.PretrainedError) as error:
    pretrained.to_flax(zeros_state_dict('vit_small_patch16_224'), 'vit_tiny',
                       template('vit_tiny'))
  lines = mismatch_lines(error.value)
  # The same names, every tensor wider: all but the (excluded) head.
  assert set(lines) == {'wrong shape'}
  assert set(lines['wrong shape']) == {
      k for k in small if not k.startswith('head.')}
  assert 'blocks.0.attn.qkv.weight 1152x384 (model 576x192)' in str(
      error.value)


def test_weights_of_another_family_are_refused_by_name():
  with pytest.raises(pretrained.PretrainedError) as error:
    pretrained.to_flax(pretrained_test.zeros_state_dict('resnet18'),
                       'vit_tiny', template('vit_tiny'))
  assert_one_line(error, 'torchvision/timm ResNet naming',
                  'vit_tiny takes timm ViT naming')
  with pytest.raises(pretrained.PretrainedError) as error:
    pretrained.to_flax(zeros_state_dict('vit_tiny_patch16_224'), 'resnet18',
                       pretrained_test.template('resnet18'))
  assert_one_line(error, 'timm ViT naming', 'resnet18 takes torchvision')


def test_position_embeddings_are_resampled_to_another_grid(references):
  """224 px weights (a 14x14 grid) into a 64 px model (4x4)."""
  state = zeros_state_dict('vit_tiny_patch16_224')
  rng = np.random.default_rng(0)
  for key in state:
    state[key] = rng.normal(0, 0.05, state[key].shape).astype(np.float32)
  # A grid constant per channel stays constant: bicubic weights sum to 1.
  channels = rng.normal(0, 0.2, 192).astype(np.float32)
  state['pos_embed'][0, 1:] = channels
  variables, report = pretrained.to_flax(
      state, 'vit_tiny', template('vit_tiny', PARITY_IMAGE))
  pos_embed = variables['params']['pos_embed']
  assert pos_embed.shape == (1, 17, 192)
  np.testing.assert_array_equal(pos_embed[0, 0], state['pos_embed'][0, 0])
  np.testing.assert_allclose(pos_embed[0, 1:],
                             np.broadcast_to(channels, (16, 192)), atol=1e-6)
  note = ('pos_embed resampled from a 14x14 to a 4x4 grid of patches '
          '(bicubic, as timm does), the class token\'s kept')
  assert report.notes == [note] and note in report.summary()
  logits = forward('vit_tiny', pool='token')(variables,
                                             references()['images'])
  assert logits.shape == (3, 1000) and np.isfinite(logits).all()
  # A grid that is not square is named, not guessed.
  with pytest.raises(pretrained.PretrainedError,
                     match='only square grids of patches'):
    pretrained.to_flax(state, 'vit_tiny', template('vit_tiny', (48, 64)))


def test_grayscale_patch_embedding_is_summed_over_channels():
  state = zeros_state_dict('vit_tiny_patch16_224')
  state['patch_embed.proj.weight'][:] = np.arange(3, dtype=np.float32)[
      None, :, None, None]
  variables, report = pretrained.to_flax(
      state, 'vit_tiny', template('vit_tiny', in_chans=1))
  np.testing.assert_array_equal(
      variables['params']['patch_embed']['proj']['kernel'],
      np.full((16, 16, 1, 192), 3.0, np.float32))
  assert report.notes == ['patch_embed.proj.weight summed over its 3 input '
                          'channels for 1-channel images (as timm does)']


def test_init_from_dispatches_a_vit_state_dict(references):
  reference = references()
  fresh = template('vit_tiny', PARITY_IMAGE, num_classes=10, fill=0.5)
  variables, source = warm_start.load(reference['files']['safetensors'],
                                      'vit_tiny', fresh)
  assert source.kind == 'state_dict'
  assert 'left new: head' in source.summary
  np.testing.assert_array_equal(
      variables['params']['pos_embed'], reference['state']['pos_embed'])
  head = warm_start.HEADS['vit_tiny']
  assert [p for p in models.parameter_paths(models.create_model(
      'vit_tiny', 10)) if re.search(head, p)] == ['head/bias', 'head/kernel']


def test_patch_size_must_divide_the_image():
  model = models.create_model('vit_tiny', 10, patch_size=5)
  with pytest.raises(ValueError) as error:
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert 'patch_size 5 does not divide the image size 32x32' in str(
      error.value)


@pytest.mark.parametrize('kwargs,message', [
    ({'pool': 'max'}, "unknown pool 'max'; accepted: token, avg"),
    ({'patch_size': 0}, 'patch_size must be a positive integer, got 0'),
    ({'drop_path_rate': 1.0}, 'drop_path_rate must be in [0, 1), got 1.0'),
])
def test_options_are_refused_when_built(kwargs, message):
  with pytest.raises(ValueError) as error:
    models.create_model('vit_tiny', 10, **kwargs)
  assert message in str(error.value)


def small_vit(**kwargs):
  return vit.VisionTransformer(num_classes=10, embed_dim=16, depth=3,
                               num_heads=2, patch_size=4, **kwargs)


def random_variables(shapes, seed=0):
  """Variables of these shapes drawn at random: N(0, 0.05), BatchNorm
  variances 1. (A jitted init of even a small model compiles for seconds
  here: one RNG program per parameter.)"""
  rng = np.random.default_rng(seed)

  def draw(path, s):
    if models.parameter_path(path).endswith('/var'):
      return np.ones(s.shape, s.dtype)
    return rng.normal(0, 0.05, s.shape).astype(s.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def check_drop_path(make, x):
  """Stochastic depth of the model `make(**options)` builds, on images x.

  Rate 0 is the model without the option: the same variables and the same
  program (jaxpr) in training, which draws no 'dropout' RNG. Rate 0.5
  draws from the RNG, the same for the same key; in eval it is the same
  program as without.
  """
  plain, zero, dropped = make(), make(drop_path_rate=0.0), make(
      drop_path_rate=0.5)
  shapes = jax.eval_shape(plain.init, jax.random.key(0), x)
  assert shapes == jax.eval_shape(zero.init, jax.random.key(0), x)
  variables = random_variables(shapes)

  def logits(model, train):
    # The ResNets' updated batch_stats are dropped.
    def run(variables, key=None):
      return model.apply(variables, x, train=train, mutable=['batch_stats'],
                         rngs={} if key is None else {'dropout': key})[0]
    return run

  def program(model, train):
    return str(jax.make_jaxpr(logits(model, train))(variables))
  assert program(zero, True) == program(plain, True)
  assert program(dropped, False) == program(plain, False)
  train = jax.jit(logits(dropped, True))
  first = train(variables, jax.random.key(3))
  np.testing.assert_array_equal(first, train(variables, jax.random.key(3)))
  assert not np.array_equal(first, train(variables, jax.random.key(4)))
  assert np.isfinite(first).all()


def test_drop_path_follows_the_rng_and_eval_ignores_it():
  check_drop_path(small_vit, jax.random.normal(jax.random.key(1),
                                               (8, 8, 8, 3)))


def drop_path_rates_seen(model, shape):
  """The rates of the DropPath modules `model` calls, in call order."""
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, layers.DropPath):
      seen.append(context.module.rate)
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
  return seen


def test_drop_path_rates_rise_linearly_over_the_blocks():
  seen = drop_path_rates_seen(
      models.create_model('vit_tiny', 10, drop_path_rate=0.11), (1, 32, 32, 3))
  # Two branches (attention, MLP) per block, the same rate in both.
  assert seen[::2] == seen[1::2]
  np.testing.assert_allclose(seen[::2], np.linspace(0, 0.11, 12), atol=1e-12)


def test_bfloat16_computes_in_bfloat16_with_float32_parameters():
  # Abstract evaluation: the dtypes without compiling.
  model = small_vit(dtype='bfloat16')
  x = jnp.ones((2, 8, 8, 3))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert {v.dtype for v in jax.tree.leaves(shapes)} == {np.dtype(np.float32)}
  assert jax.eval_shape(model.apply, shapes, x).dtype == jnp.bfloat16
