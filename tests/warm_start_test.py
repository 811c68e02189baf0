"""Tests for warm_start.py: starting a run from an earlier run of ours.

The PyTorch state-dict route is tested in pretrained_test.py.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import conftest
from pretrained_test import require
import inference
import train
import warm_start
import workdir_files


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return conftest.make_idx_dir(str(tmp_path_factory.mktemp('data')),
                               num_train=32, num_test=20)


@pytest.fixture(scope='module')
def source_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('source'))
  train.train_and_evaluate(conftest.tiny_config(data_dir, num_train_steps=8),
                           workdir)
  return workdir


def _params(workdir, step):
  path = os.path.join(workdir_files.checkpoint_dir(workdir), str(step))
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  state = checkpointer.restore(path, args=ocp.args.Composite(
      state=ocp.args.StandardRestore())).state
  checkpointer.close()
  return jax.tree.map(np.asarray, state['params'])


@pytest.mark.parametrize('exclude,head_copied', [('', False), ('$^', True)])
def test_zero_steps_from_a_run_starts_from_its_weights(
    tmp_path, data_dir, source_run, exclude, head_copied):
  workdir = str(tmp_path / 'w')
  summary = train.train_and_evaluate(conftest.tiny_config(
      data_dir, num_train_steps=0, init_from=source_run,
      init_exclude=exclude, seed=1), workdir)
  best = workdir_files.read_json(source_run, workdir_files.SUMMARY)[
      'best_step']
  before, after = _params(source_run, best), _params(workdir, 0)
  for name in before:
    same = all(np.array_equal(before[name][k], after[name][k])
               for k in before[name])
    assert same == (name != 'Dense_1' or head_copied), name
  assert summary['initialized_from']['kind'] == 'run'
  assert summary['initialized_from']['step'] == best
  if not head_copied:
    assert 'left new: Dense_1/' in summary['initialized_from']['summary']


# Three runs (about 6 s): make test-all and CI.
@pytest.mark.slow
def test_resuming_does_not_load_again(tmp_path, data_dir, source_run,
                                      caplog):
  workdir = str(tmp_path / 'w')
  config = conftest.tiny_config(data_dir, num_train_steps=4,
                                checkpoint_every_steps=2,
                                init_from=source_run)
  train.train_and_evaluate(config, workdir)
  config.num_train_steps = 6
  with caplog.at_level('INFO', logger='absl'):
    summary = train.train_and_evaluate(config, workdir)
  assert any('is not used again' in r.getMessage() for r in caplog.records)
  assert summary['initialized_from']['path'].startswith(
      source_run)  # Kept in the checkpoint.


@pytest.mark.parametrize('init_from,message', [
    ('/no/such/run', "init_from '/no/such/run' does not exist; accepted: a "
                     "training workdir"),
    ('{source}:77', "init_from '{source}:77': '77' is not best, latest or one "
                    "of the steps [4, 8]"),
])
def test_a_bad_source_is_refused_before_the_workdir_is_made(
    tmp_path, data_dir, source_run, init_from, message):
  workdir = str(tmp_path / 'w')
  with pytest.raises(warm_start.WarmStartError) as e:
    train.train_and_evaluate(conftest.tiny_config(
        data_dir, init_from=init_from.format(source=source_run)), workdir)
  assert str(e.value).startswith(message.format(source=source_run))
  assert not os.path.exists(workdir)


def test_another_model_is_named_with_every_difference(tmp_path, data_dir,
                                                      source_run):
  with pytest.raises(warm_start.WarmStartError) as e:
    train.train_and_evaluate(conftest.tiny_config(
        data_dir, init_from=source_run, model='mlp'), str(tmp_path / 'w'))
  message = str(e.value)
  assert message.startswith('the source does not fit the model: ')
  assert 'unused: params/Conv_0/bias' in message
  assert 'wrong shape: ' in message and '\n' not in message
  assert 'params/Dense_0/kernel [3136, 256] (model [784, 512])' in message


def test_a_head_of_other_classes_is_left_new():
  zeros = lambda *shape: np.zeros(shape, np.float32)
  template = {'params': {'Conv_0': {'kernel': zeros(3, 3, 1, 4)},
                         'Dense_0': {'kernel': zeros(4, 5)}}}
  loaded = {'params': {'Conv_0': {'kernel': np.ones((3, 3, 1, 4))},
                       'Dense_0': {'kernel': np.ones((4, 10))}}}
  variables, left_new = warm_start.fit_run_variables(loaded, template, '',
                                                     r'^Dense_0/')
  assert float(variables['params']['Conv_0']['kernel'].sum()) == 36
  assert float(variables['params']['Dense_0']['kernel'].sum()) == 0
  assert left_new == ["Dense_0/kernel (init_exclude '^Dense_0/')"]


@pytest.mark.slow  # A ResNet-18 compiled twice: about a minute here.
def test_torch_weights_through_a_run_with_a_frozen_backbone(tmp_path,
                                                            data_dir):
  # The whole route: a torchvision-named state dict -> a 10-class grayscale
  # run whose backbone is frozen: after training only the head moved.
  torch = require('torch')
  safetensors_torch = require('safetensors.torch')
  torch_reference = require('torch_reference')
  torch.manual_seed(0)
  reference = torch_reference.create_resnet('resnet18')
  path = str(tmp_path / 'resnet18.safetensors')
  safetensors_torch.save_file(reference.state_dict(), path)
  workdir = str(tmp_path / 'w')
  summary = train.train_and_evaluate(conftest.tiny_config(
      data_dir, model='resnet18', init_from=path, num_train_steps=2,
      freeze='^(?!Dense_0)', eval_batch_size=20), workdir)
  source = summary['initialized_from']
  assert source['kind'] == 'state_dict' and len(source['sha256']) == 64
  assert 'left new: Dense_0' in source['summary']
  params = _params(workdir, 2)
  stem = reference.state_dict()['conv1.weight'].numpy().sum(1)  # Gray.
  np.testing.assert_allclose(params['Conv_0']['kernel'],
                             stem.transpose(1, 2, 0)[:, :, None, :],
                             rtol=1e-6)
  start = {k: v.numpy() for k, v in reference.state_dict().items()}
  np.testing.assert_array_equal(  # Frozen, bitwise.
      params['BasicBlock_7']['Conv_1']['kernel'],
      start['layer4.1.conv2.weight'].transpose(2, 3, 1, 0))
  assert summary['test_loss'] > 0


@pytest.mark.slow  # A ResNet-18 at 224 px: about a minute here.
def test_predict_gives_pytorchs_probabilities_on_a_photo(tmp_path):
  # torchvision weights of a 3-class ResNet-18, zero steps, then our
  # --mode=predict on a 500x375 PNG with normalize=imagenet and
  # eval_crop_pct=0.875, against PyTorch with torchvision's eval transforms
  # done by PIL (shorter side to int(224 / 0.875), centre crop, bilinear).
  torch = require('torch')
  safetensors_torch = require('safetensors.torch')
  torch_reference = require('torch_reference')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  reference = torch_reference.create_resnet('resnet18', num_classes=3)
  torch_reference.randomize_batchnorm(reference, torch.randn(4, 3, 64, 64))
  weights = str(tmp_path / 'resnet18.safetensors')
  safetensors_torch.save_file(reference.state_dict(), weights)
  folder = conftest.make_image_folder(str(tmp_path / 'images'), num_train=2,
                                      num_test=1, size=(224, 224))
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(conftest.tiny_config(
      folder, model='resnet18', init_from=weights, init_exclude='$^',
      num_train_steps=0, normalize='imagenet', eval_crop_pct=0.875,
      batch_size=2, eval_batch_size=3), workdir)
  rng = np.random.default_rng(1)
  photo = str(tmp_path / 'photo.png')
  pixels = rng.integers(0, 256, (375, 500, 3)).astype(np.uint8)
  pixels[100:250, 150:350] = [200, 40, 40]
  Image.fromarray(pixels).save(photo)
  lines, failed = inference.predict_files(workdir_files.load_config(workdir),
                                          workdir, [photo], top_k=3)
  assert not failed
  ours = dict(item.rsplit(' ', 1) for item in
              lines[0].split(': ', 1)[1].split(', '))
  image = Image.open(photo).convert('RGB')
  image = image.resize((int(256 * 500 / 375), 256), Image.BILINEAR)
  top, left = int(round((256 - 224) / 2)), int(round((image.width - 224) / 2))
  image = np.asarray(image.crop((left, top, left + 224, top + 224)),
                     np.float32) / 255
  image = (image - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  with torch.no_grad():
    probabilities = torch.softmax(reference(torch.tensor(
        image.transpose(2, 0, 1)[None], dtype=torch.float32)), -1)[0].numpy()
  names = ['cat', 'dog', 'fox']
  assert max(ours, key=lambda n: float(ours[n])) == names[
      int(probabilities.argmax())]
  for i, name in enumerate(names):
    assert abs(float(ours[name]) - probabilities[i]) < 1e-2, (ours,
                                                              probabilities)


@pytest.mark.parametrize('kind,cfg,expected', [
    ('run', {}, {}),
    ('state_dict', {}, {'normalize': 'imagenet'}),
    ('hub', {'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225],
             'interpolation': 'bicubic', 'crop_pct': 0.95},
     {'normalize': 'imagenet', 'eval_crop_pct': 0.95,
      'interpolation': 'bicubic'}),
    ('hub', {'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5],
             'interpolation': 'bilinear', 'crop_pct': 1.0},
     {'normalize': '0.5,0.5,0.5/0.5,0.5,0.5', 'eval_crop_pct': 1.0,
      'interpolation': 'bilinear'}),
    # What our pipeline cannot do is not offered.
    ('hub', {'interpolation': 'nearest', 'crop_pct': 1.5},
     {'normalize': 'imagenet'}),
])
def test_the_preprocessing_a_source_expects(kind, cfg, expected):
  source = warm_start.Source('x', kind, pretrained_cfg=cfg)
  assert source.preprocessing() == expected



def test_a_run_is_told_the_flags_its_weights_expect():
  """The log names each key the config leaves different from what the
  hub's config.json says, with the flag that matches it."""
  config = conftest.tiny_config('', num_train_steps=0)
  config.interpolation = 'bicubic'
  source = warm_start.Source('hf-hub:timm/x', 'hub', pretrained_cfg={
      'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225],
      'interpolation': 'bicubic', 'crop_pct': 0.95})
  info, warning = warm_start.preprocessing_advice(source, config)
  assert info == ('These weights expect normalize=imagenet, '
                  'eval_crop_pct=0.95, interpolation=bicubic (the hub '
                  'config.json)')
  assert warning == ('This run uses normalize=none, eval_crop_pct=1.0 '
                     'instead; to match the weights add '
                     '--config.normalize=imagenet --config.eval_crop_pct=0.95')
  config.normalize, config.eval_crop_pct = 'imagenet', 0.95
  assert warm_start.preprocessing_advice(source, config)[1] is None
  assert warm_start.preprocessing_advice(
      warm_start.Source('W', 'run'), config) == (None, None)
