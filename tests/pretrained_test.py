"""Tests of pretrained.py: reading files and the hub cache, the name and
layout mapping, its errors, and logits parity with PyTorch.

The torch side is tests/torch_reference.py (torchvision's ResNets in plain
PyTorch, their keys checked against torchvision's own in tests/fixtures/).
PyTorch, safetensors and huggingface_hub come from requirements-extras.txt;
without them these tests fail, saying so, rather than skip.
"""

import functools
import importlib
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
import models
import pretrained

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures',
                       'torchvision_resnet_state_dicts.json')
# torchvision's documented parameter counts (its model pages).
PUBLISHED_PARAMS = {'resnet18': 11_689_512, 'resnet50': 25_557_032}
IMAGE = 64  # Pixels a side of the images that set the variables' shapes.
# The parity images, (height, width): unequal sides catch a swapped H/W. At
# 40-64 px the first ResNet-50 run takes a minute or more on 2 cores with
# runtime.py's XLA flag (ynn fusions); at 32 px it takes about a second and
# every stage still runs (layer4 at 1x1).
PARITY_SIZES = {'resnet18': (64, 48), 'resnet50': (32, 32)}
HUB_REPO = 'timm/resnet18.test_in1k'
HUB_CFG = {'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225],
           'interpolation': 'bicubic', 'crop_pct': 0.95,
           'input_size': [3, 224, 224]}


def require(module):
  """Imports `module`, failing (never skipping) when the extras are absent."""
  try:
    return importlib.import_module(module)
  except ImportError:
    pytest.fail(f'{module} is not installed; tests/pretrained_test.py needs '
                f'the extras: pip install -r requirements-extras.txt',
                pytrace=False)


@functools.lru_cache(maxsize=None)
def fixture_keys(arch):
  with open(FIXTURE, encoding='utf-8') as f:
    return [(k, tuple(s)) for k, s in json.load(f)[arch]]


def zeros_state_dict(arch):
  """torchvision's keys and shapes for `arch`, all zeros: no torch needed."""
  return {k: np.zeros(s, np.int64 if k.endswith('num_batches_tracked')
                      else np.float32) for k, s in fixture_keys(arch)}


@functools.lru_cache(maxsize=None)
def variable_shapes(arch, num_classes=1000, in_chans=3):
  model = models.create_model(arch, num_classes)
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, IMAGE, IMAGE, in_chans)))


def template(arch, num_classes=1000, in_chans=3, fill=0.0):
  """A variables tree of the model's shapes, filled with `fill` (for speed:
  a real init of a ResNet-50 takes tens of seconds on 2 cores)."""
  return jax.tree.map(lambda s: np.full(s.shape, fill, s.dtype),
                      variable_shapes(arch, num_classes, in_chans))


@functools.lru_cache(maxsize=None)
def forward(arch):
  model = models.create_model(arch, 1000)
  return jax.jit(lambda variables, x: model.apply(variables, x, train=False))


@pytest.fixture(scope='module')
def references(tmp_path_factory):
  """arch -> a random reference model, its files, images and eval logits."""
  torch = require('torch')
  safetensors_torch = require('safetensors.torch')
  torch_reference = importlib.import_module('torch_reference')
  folder = tmp_path_factory.mktemp('references')
  out = {}

  def build(arch):
    if arch not in out:
      torch.manual_seed(len(out))
      model = torch_reference.create_resnet(arch)
      size = PARITY_SIZES[arch]
      torch_reference.randomize_batchnorm(
          model, torch.randn(8, 3, *size), seed=len(out))
      images = torch.randn(3, 3, *size)
      with torch.no_grad():
        logits = model(images).numpy()
      state = model.state_dict()
      files = {'safetensors': str(folder / f'{arch}.safetensors'),
               'pth': str(folder / f'{arch}.pth')}
      safetensors_torch.save_file(state, files['safetensors'])
      torch.save(state, files['pth'])
      out[arch] = dict(model=model, images=images.numpy(), logits=logits,
                       files=files, state={k: v.numpy() for k, v in
                                           state.items()})
    return out[arch]
  return build


def assert_logits_close(got, want):
  """Within 1e-4 of the largest logit, and the logits tell images apart
  (so they depend on every layer, not only on fc's bias)."""
  assert np.std(want, axis=0).mean() > 0.1 * np.abs(want).mean()
  error = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
  assert error < 1e-4, error


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_reference_has_torchvisions_keys_and_parameter_count(arch):
  require('torch')
  torch_reference = importlib.import_module('torch_reference')
  model = torch_reference.create_resnet(arch)
  assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()
          ] == fixture_keys(arch)
  assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[arch]


@pytest.mark.parametrize('arch', ['resnet18', 'resnet34', 'resnet50'])
def test_every_torchvision_key_maps_one_to_one(arch):
  variables, report = pretrained.to_flax(zeros_state_dict(arch), arch,
                                         template(arch), exclude_regexes=())
  assert len(report.loaded) == len(jax.tree.leaves(variables))
  assert not report.left_new
  assert report.ignored == [k for k, _ in fixture_keys(arch)
                            if k.endswith('.num_batches_tracked')]
  with open(FIXTURE, encoding='utf-8') as f:
    published = json.load(f)['num_params'][arch]
  assert report.loaded_params == report.total_params == published


@pytest.mark.parametrize('arch', [
    'resnet18',
    # About 10 s of compiling each: in make test-all and CI.
    pytest.param('resnet50', marks=pytest.mark.slow)])
@pytest.mark.parametrize('kind', ['safetensors', 'pth'])
def test_logits_match_pytorch(references, arch, kind):
  reference = references(arch)
  variables, report = pretrained.load_pretrained(
      reference['files'][kind], arch, template(arch), exclude_regexes=())
  assert not report.left_new
  got = forward(arch)(variables, reference['images'].transpose(0, 2, 3, 1))
  assert_logits_close(got, reference['logits'])


def test_default_leaves_the_head_new(references):
  reference = references('resnet18')
  fresh = template('resnet18', fill=0.5)
  variables, report = pretrained.load_pretrained(
      reference['files']['safetensors'], 'resnet18', fresh)
  np.testing.assert_array_equal(variables['params']['Dense_0']['kernel'],
                                fresh['params']['Dense_0']['kernel'])
  assert report.left_new == {'params/Dense_0/bias': r'excluded by ^fc\.',
                             'params/Dense_0/kernel': r'excluded by ^fc\.'}
  assert {'fc.weight', 'fc.bias'} <= set(report.ignored)
  assert report.loaded_params == PUBLISHED_PARAMS['resnet18'] - 513 * 1000
  assert report.summary() == (
      f'resnet18 from {reference["files"]["safetensors"]}: loaded 100/102 '
      f'tensors, 11,176,512 of 11,689,512 parameters; left new: Dense_0 '
      r'(excluded by ^fc\.)')


def test_head_with_other_classes_is_left_new(references):
  reference = references('resnet18')
  fresh = template('resnet18', num_classes=10, fill=0.5)
  variables, report = pretrained.load_pretrained(
      reference['files']['safetensors'], 'resnet18', fresh,
      exclude_regexes=())
  np.testing.assert_array_equal(variables['params']['Dense_0']['bias'],
                                np.full(10, 0.5, np.float32))
  assert set(report.left_new) == {'params/Dense_0/kernel',
                                  'params/Dense_0/bias'}
  assert 'left new: Dense_0 (1000 classes in the weights, 10 in the model)' \
      in report.summary()
  np.testing.assert_array_equal(
      variables['params']['Conv_0']['kernel'],
      reference['state']['conv1.weight'].transpose(2, 3, 1, 0))


def test_grayscale_stem_is_summed_over_channels(references):
  reference = references('resnet18')
  variables, report = pretrained.load_pretrained(
      reference['files']['safetensors'], 'resnet18',
      template('resnet18', in_chans=1), exclude_regexes=())
  np.testing.assert_allclose(
      variables['params']['Conv_0']['kernel'],
      reference['state']['conv1.weight'].sum(1, keepdims=True).transpose(
          2, 3, 1, 0), rtol=1e-6)
  assert report.notes == ['conv1.weight summed over its 3 input channels '
                          'for 1-channel images (as timm does)']
  assert report.notes[0] in report.summary()
  # A gray image through the summed stem is that image, copied to RGB,
  # through the original one.
  gray = reference['images'][:, :1]
  got = forward('resnet18')(variables, gray.transpose(0, 2, 3, 1))
  torch = require('torch')
  with torch.no_grad():
    want = reference['model'](torch.from_numpy(gray).repeat(1, 3, 1, 1))
  assert_logits_close(got, want.numpy())


def test_bfloat16_safetensors_load_as_float32(references, tmp_path):
  safetensors_torch = require('safetensors.torch')
  state = references('resnet18')['model'].state_dict()
  path = str(tmp_path / 'bf16.safetensors')
  safetensors_torch.save_file(
      {k: v.bfloat16() if v.is_floating_point() else v
       for k, v in state.items()}, path)
  read = pretrained.read_state_dict(path)
  assert read['conv1.weight'].dtype == np.float32
  assert read['bn1.num_batches_tracked'].dtype == np.int64
  np.testing.assert_array_equal(
      read['conv1.weight'], state['conv1.weight'].bfloat16().float().numpy())
  pretrained.to_flax(read, 'resnet18', template('resnet18'))


def test_containers_and_ddp_prefix_are_unwrapped(references, tmp_path):
  torch = require('torch')
  state = references('resnet18')['model'].state_dict()
  ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
  path = str(tmp_path / 'checkpoint.pth')
  torch.save({'epoch': 3, 'arch': 'resnet18',
              'state_dict': {f'module.{k}': v for k, v in state.items()},
              'state_dict_ema': ema}, path)
  read = pretrained.read_state_dict(path)
  assert list(read) == list(state)
  np.testing.assert_array_equal(read['fc.bias'], state['fc.bias'].numpy())
  read_ema = pretrained.read_state_dict(path, ema=True)
  np.testing.assert_array_equal(read_ema['fc.bias'], ema['fc.bias'].numpy())
  model_path = str(tmp_path / 'model.pt')
  torch.save({'model': state}, model_path)
  assert list(pretrained.read_state_dict(model_path)) == list(state)


def mismatch_lines(error):
  """{'missing'|'unused'|'wrong shape': [torch keys]} from a to_flax error."""
  out = {}
  for line in str(error).splitlines()[1:]:
    what, keys = line.strip().split(': ', 1)
    out[what] = [k.split(' ')[0] for k in keys.split(', ')]
  return out


def test_resnet50_into_resnet18_lists_every_mismatch_in_one_error():
  r18, r50 = dict(fixture_keys('resnet18')), dict(fixture_keys('resnet50'))
  with pytest.raises(pretrained.PretrainedError) as error:
    pretrained.to_flax(zeros_state_dict('resnet50'), 'resnet18',
                       template('resnet18'))
  lines = mismatch_lines(error.value)
  assert set(lines['unused']) == {
      k for k in r50 if k not in r18 and not k.startswith('fc.')
      and not k.endswith('num_batches_tracked')}
  assert set(lines['wrong shape']) == {
      k for k in r18 if k in r50 and r18[k] != r50[k]
      and not k.startswith('fc.')}
  assert 'missing' not in lines  # ResNet-50 has every ResNet-18 name.
  assert 'layer1.0.conv1.weight 64x64x1x1 (model 64x64x3x3)' in str(
      error.value)
  # And the other way round: ResNet-18 lacks conv3, bn3 and more blocks.
  with pytest.raises(pretrained.PretrainedError) as error:
    pretrained.to_flax(zeros_state_dict('resnet18'), 'resnet50',
                       template('resnet50'))
  lines = mismatch_lines(error.value)
  assert set(lines['missing']) == {
      k for k in r50 if k not in r18 and not k.startswith('fc.')
      and not k.endswith('num_batches_tracked')}
  assert 'unused' not in lines


def assert_one_line(error, *parts):
  text = str(error.value)
  assert '\n' not in text, text
  for part in parts:
    assert part in text, (part, text)


def test_damaged_or_foreign_files_give_one_line(references, tmp_path):
  torch = require('torch')
  with open(references('resnet18')['files']['safetensors'], 'rb') as f:
    data = f.read()
  for name, content in (('truncated.safetensors', data[:len(data) // 2]),
                        ('cut_tail.safetensors', data[:-10]),
                        ('garbage.pth', b'not a pickle at all')):
    path = str(tmp_path / name)
    with open(path, 'wb') as f:
      f.write(content)
    with pytest.raises(pretrained.PretrainedError) as error:
      pretrained.read_state_dict(path)
    assert_one_line(error, path, 'accepted: .safetensors')
  path = str(tmp_path / 'list.pth')
  torch.save([1, 2, 3], path)
  with pytest.raises(pretrained.PretrainedError) as error:
    pretrained.read_state_dict(path)
  assert_one_line(error, path, 'is not a state dict')
  for path in (str(tmp_path / 'weights.npz'), str(tmp_path / 'absent.pth')):
    with pytest.raises(pretrained.PretrainedError) as error:
      pretrained.read_state_dict(path)
    assert_one_line(error, path, 'accepted')


def test_pth_without_pytorch_says_what_to_install(references, monkeypatch):
  path = references('resnet18')['files']['pth']
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` fails.
  with pytest.raises(pretrained.PretrainedError) as error:
    pretrained.read_state_dict(path)
  assert_one_line(error, path, 'PyTorch', 'not installed',
                  'pip install -r requirements-extras.txt', '.safetensors')


def test_naming_of_other_layouts_is_refused_by_name():
  assert pretrained.detect_naming(dict(fixture_keys('resnet50'))) == \
      'torchvision'
  with open(FIXTURE, encoding='utf-8') as f:
    deep_stem = [k for k, _ in json.load(f)['timm_resnet50d_first_keys']]
  with pytest.raises(pretrained.PretrainedError, match='deep 3x3 stem'):
    pretrained.detect_naming(deep_stem)
  with pytest.raises(pretrained.PretrainedError, match='transformers'):
    pretrained.detect_naming(['resnet.embedder.embedder.convolution.weight'])
  with pytest.raises(pretrained.PretrainedError, match='unrecognised'):
    pretrained.detect_naming(['params/Conv_0/kernel'])
  with pytest.raises(pretrained.PretrainedError, match='accepted: resnet18'):
    pretrained.to_flax({}, 'resnet20', {})


def lay_out_hub_cache(cache, repo_id, files):
  """huggingface_hub's cache layout: blobs/, snapshots/<commit>/ linking to
  them, refs/main naming the commit."""
  commit = '0123456789abcdef0123456789abcdef01234567'
  repo = cache / f'models--{repo_id.replace("/", "--")}'
  (repo / 'blobs').mkdir(parents=True)
  (repo / 'snapshots' / commit).mkdir(parents=True)
  (repo / 'refs').mkdir()
  (repo / 'refs' / 'main').write_text(commit)
  for i, (name, content) in enumerate(files.items()):
    blob = repo / 'blobs' / f'{i:064x}'
    blob.write_bytes(content)
    os.symlink(os.path.join('..', '..', 'blobs', blob.name),
               repo / 'snapshots' / commit / name)


@pytest.mark.parametrize('variable', ['HF_HUB_CACHE', 'HF_HOME'])
def test_hub_name_reads_the_cache_offline(references, tmp_path, monkeypatch,
                                          variable):
  require('huggingface_hub')
  reference = references('resnet18')
  with open(reference['files']['safetensors'], 'rb') as f:
    weights = f.read()
  config = {'architecture': 'resnet18', 'num_classes': 1000,
            'pretrained_cfg': dict(HUB_CFG, tag='test_in1k',
                                   classifier='fc')}
  lay_out_hub_cache(tmp_path / 'hub', HUB_REPO, {
      'model.safetensors': weights,
      'config.json': json.dumps(config).encode()})
  for name in ('HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE', 'HF_HOME'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv(variable, str(tmp_path / 'hub' if variable ==
                                   'HF_HUB_CACHE' else tmp_path))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  variables, report = pretrained.load_pretrained(
      f'hf-hub:{HUB_REPO}', 'resnet18', template('resnet18'))
  assert report.pretrained_cfg == HUB_CFG
  assert report.source == f'hf-hub:{HUB_REPO}'
  np.testing.assert_array_equal(
      variables['batch_stats']['BatchNorm_0']['var'],
      reference['state']['bn1.running_var'])


def test_hub_name_reads_the_cache_without_network(references, tmp_path):
  """Not offline, but the Hub unreachable (a closed port on this machine):
  huggingface_hub falls back to the cache. A subprocess, as huggingface_hub
  reads HF_ENDPOINT at import."""
  require('huggingface_hub')
  with open(references('resnet18')['files']['safetensors'], 'rb') as f:
    weights = f.read()
  lay_out_hub_cache(tmp_path / 'hub', HUB_REPO, {
      'model.safetensors': weights,
      'config.json': json.dumps({'pretrained_cfg': HUB_CFG}).encode()})
  code = ('import json, pretrained; state, cfg = pretrained.read_hub('
          f'"hf-hub:{HUB_REPO}"); print(len(state), json.dumps(cfg))')
  result = conftest.run_python(['-c', code], timeout=120, env={
      'HF_ENDPOINT': 'http://127.0.0.1:9', 'HF_HUB_OFFLINE': '0',
      'HF_HUB_CACHE': str(tmp_path / 'hub')})
  assert result.returncode == 0, result.stderr
  assert result.stdout.split(' ', 1) == [
      str(len(fixture_keys('resnet18'))), json.dumps(HUB_CFG) + '\n']


def test_hub_name_not_in_cache_says_what_to_fetch_and_where(tmp_path,
                                                            monkeypatch):
  require('huggingface_hub')
  monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hub'))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  with pytest.raises(pretrained.PretrainedError) as error:
    pretrained.read_hub(f'hf-hub:{HUB_REPO}')
  folder = str(tmp_path / 'hub' / 'models--timm--resnet18.test_in1k')
  assert_one_line(error, f'hf-hub:{HUB_REPO}', 'model.safetensors',
                  'HF_HUB_OFFLINE', f'hf download {HUB_REPO}', folder)


def test_batchnorm_matches_pytorch():
  """PyTorch's momentum 0.1 weighs the new batch; Flax's 0.9 the old
  average: the same decay. eps must be equal for eval-mode parity."""
  seen = set()

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm):
      seen.add((context.module.momentum, context.module.epsilon))
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(record):
    for arch in pretrained.ARCHS:
      variable_shapes.__wrapped__(arch)
  assert seen == {(0.9, 1e-5)}
