"""Tests for imported_models.py: the user's own Linen and NNX modules, named
by import path in config.model, through training, resume, eval and predict.

The modules are written by the tests into a temporary folder, as a user
would write them.
"""

import os
import shutil
import signal

import jax
import numpy as np
from PIL import Image
import pytest

import checkpointing
import config_rules
import conftest
import imported_models
import inference
import train
import workdir_files

LINEN = '''
import flax.linen as nn


class Net(nn.Module):
  """BatchNorm and dropout: every kind of state a step carries."""
  num_classes: int
  width: int = 8

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(self.width, (3, 3))(x)
    x = nn.relu(nn.BatchNorm()(x, use_running_average=not train))
    x = nn.Dropout(0.2, deterministic=not train)(x.mean((1, 2)))
    return nn.Dense(self.num_classes)(x)


class BuiltNorm(nn.Module):
  """use_running_average fixed when built: its statistics cannot be frozen."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x))
    return nn.Dense(self.num_classes)(x.mean((1, 2)))


class ThreeClasses(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3)(x.mean((1, 2)))


class NoClasses(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(10)(x.mean((1, 2)))


def make_model(num_classes):
  return Net(num_classes)
'''

NNX = '''
from flax import nnx


class Net(nnx.Module):
  def __init__(self, num_classes, channels=1, width=8, *, rngs):
    self.conv = nnx.Conv(channels, width, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(width, rngs=rngs)
    self.dropout = nnx.Dropout(0.2, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x))).mean((1, 2))
    return self.head(self.dropout(x))


class NoRngs(nnx.Module):
  def __init__(self, num_classes):
    self.num_classes = num_classes
'''

STEPS = 16


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return conftest.make_idx_dir(str(tmp_path_factory.mktemp('data')),
                               num_train=64, num_test=20)


@pytest.fixture(scope='module')
def code(tmp_path_factory):
  """A folder with linen_net.py, nnx_net.py and the package mynets."""
  folder = tmp_path_factory.mktemp('code')
  (folder / 'linen_net.py').write_text(LINEN)
  (folder / 'nnx_net.py').write_text(NNX)
  (folder / 'broken.py').write_text('raise RuntimeError("boom")\n')
  (folder / 'mynets').mkdir()
  (folder / 'mynets' / '__init__.py').write_text('')
  (folder / 'mynets' / 'small.py').write_text(LINEN)
  return folder


def config_for(data_dir, model, **overrides):
  return conftest.tiny_config(data_dir, **{
      'model': model, 'num_train_steps': STEPS, 'checkpoint_every_steps': 8,
      **overrides})


@pytest.fixture(scope='module', params=['linen', 'nnx'])
def reference(request, tmp_path_factory, data_dir, code):
  """(model path, workdir of an uninterrupted run)."""
  model = f'{code}/{request.param}_net.py:Net'
  workdir = str(tmp_path_factory.mktemp(f'reference_{request.param}'))
  train.train_and_evaluate(config_for(data_dir, model), workdir)
  return model, workdir


def test_resumed_run_is_bitwise_the_uninterrupted_one(tmp_path, data_dir,
                                                      reference):
  """A run that lost its last checkpoint and results resumes from step 8
  and ends bit for bit where the uninterrupted run did."""
  model, reference_dir = reference
  workdir = str(tmp_path / 'w')
  shutil.copytree(reference_dir, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', str(STEPS)))
  os.remove(os.path.join(workdir, workdir_files.SUMMARY))
  train.train_and_evaluate(config_for(data_dir, model), workdir)
  conftest.assert_same_run(workdir, reference_dir, STEPS)


def test_eval_and_predict_import_the_model_again(tmp_path, reference,
                                                 caplog):
  model, workdir = reference
  config = workdir_files.load_config(workdir)
  assert config.model == model  # Absolute already.
  summary = workdir_files.read_json(workdir, workdir_files.SUMMARY)
  assert summary['model_code']['file'] == model.rpartition(':')[0]
  assert len(summary['model_code']['sha256']) == 64
  with caplog.at_level('INFO'):
    report = inference.evaluate_checkpoint(config, workdir)
  assert f'imported again from {model.rpartition(":")[0]}' in caplog.text
  assert report['accuracy'] == pytest.approx(summary['best_test_accuracy'])
  image = str(tmp_path / 'digit.png')
  Image.fromarray(np.full((28, 28), 200, np.uint8)).save(image)
  lines, failed = inference.predict_files(config, workdir, [image])
  assert not failed and image in lines[0]


# About 2 s: make test-all and CI.
@pytest.mark.slow
def test_a_module_path_imports_from_the_working_folder(tmp_path, data_dir,
                                                       code, monkeypatch):
  monkeypatch.chdir(code)
  workdir = str(tmp_path / 'w')
  summary = train.train_and_evaluate(
      config_for(data_dir, 'mynets.small:Net', num_train_steps=2), workdir)
  assert summary['model_code']['file'] == str(code / 'mynets' / 'small.py')


def test_only_the_kwargs_the_user_set_are_passed(code):
  model = imported_models.create(f'{code}/linen_net.py:Net', 5, width=3)
  assert (model.num_classes, model.width) == (5, 3)
  assert imported_models.options(f'{code}/linen_net.py:Net') == {'width'}
  assert imported_models.options(f'{code}/nnx_net.py:Net') == {'channels',
                                                               'width'}


@pytest.mark.parametrize('model,kwargs,expected', [
    ('{code}/nowhere.py:Net', {}, 'no file {code}/nowhere.py'),
    ('no_such_package.nets:Net', {}, "no module named 'no_such_package'"),
    ('{code}/broken.py:Net', {}, 'failed: RuntimeError: boom'),
    ('{code}/linen_net.py:Nett', {}, "has no 'Nett'; Flax modules it "
     'defines: BuiltNorm, Net, NoClasses, ThreeClasses'),
    ('{code}/linen_net.py:make_model', {}, 'is not a Flax Linen or NNX '
     'Module class (it is function'),
    ('{code}/linen_net.py:NoClasses', {}, 'takes no num_classes'),
    ('{code}/nnx_net.py:NoRngs', {}, '(NNX) takes no rngs'),
    ('{code}/linen_net.py:Net', {'depth': 3}, "unknown config key "
     "'model_kwargs.depth' for model {code}/linen_net.py:Net; accepted: "
     'model_kwargs.width'),
    ('{code}/linen_net.py:ThreeClasses', {}, 'returns shape (2, 3) for 2 '
     'images of shape (28, 28, 1); expected logits of shape (2, 10)'),
    # The NNX model is built for 1 channel; the check sees its error.
    ('{code}/nnx_net.py:Net', {'channels': 3}, 'fails on a batch of images '
     'of shape (28, 28, 1)'),
    ('{code}/linen_net.py:BuiltNorm', {'freeze': 'BatchNorm'}, 'matches '
     'BatchNorm_0, a BatchNorm built with use_running_average'),
    ('{code}/nnx_net.py:Net', {'freeze': 'BatchNorm'}, "freeze 'BatchNorm' "
     'matches no parameter of the model; accepted: a regex over its '
     'parameter paths, e.g. bn/bias'),
])
def test_a_bad_model_is_refused_before_the_workdir_is_made(
    tmp_path, data_dir, code, model, kwargs, expected):
  config = config_for(data_dir, model.format(code=code))
  if 'freeze' in kwargs:
    config.freeze = kwargs.pop('freeze')
  config.model_kwargs.update(kwargs)
  workdir = str(tmp_path / 'w')
  with pytest.raises(config_rules.ConfigError) as error:
    train.train_and_evaluate(config, workdir)
  assert expected.format(code=code) in str(error.value)
  assert '\n' not in str(error.value)
  assert not os.path.exists(workdir)


def test_resuming_with_another_path_is_refused(tmp_path, data_dir, code,
                                               reference):
  model, reference_dir = reference
  copy = tmp_path / os.path.basename(model.rpartition(':')[0])
  shutil.copy(model.rpartition(':')[0], copy)
  workdir = str(tmp_path / 'w')
  shutil.copytree(reference_dir, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', str(STEPS)))
  before = conftest.snapshot(workdir)
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match='model'):
    train.train_and_evaluate(config_for(data_dir, f'{copy}:Net'), workdir)
  assert conftest.snapshot(workdir) == before


# Two runs (about 3 s): make test-all and CI.
@pytest.mark.slow
def test_a_changed_file_is_said_on_resume(tmp_path, data_dir, caplog):
  path = tmp_path / 'net.py'
  path.write_text(LINEN)
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(config_for(data_dir, f'{path}:Net',
                                      num_train_steps=4), workdir)
  path.write_text(LINEN + '\n# An edit.\n')
  with caplog.at_level('WARNING'):
    train.train_and_evaluate(config_for(data_dir, f'{path}:Net',
                                        num_train_steps=8), workdir)
  assert f'{path} has changed since the checkpoint was written' in (
      caplog.text)


def test_eval_says_when_the_model_is_no_longer_importable(tmp_path,
                                                          data_dir):
  path = tmp_path / 'net.py'
  path.write_text(NNX)
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(config_for(data_dir, f'{path}:Net',
                                      num_train_steps=2), workdir)
  os.remove(path)
  with pytest.raises(config_rules.ConfigError) as error:
    inference.evaluate_checkpoint(workdir_files.load_config(workdir), workdir)
  assert str(error.value).startswith(
      f"the model of this run is no longer importable here: model "
      f"'{path}:Net': no file {path}")


def test_frozen_nnx_batchnorm_keeps_its_parameters_and_statistics(
    tmp_path, data_dir, code):
  """freeze on an NNX model holds the matched parameters and, through
  Module.train() then use_running_average, its BatchNorm statistics."""
  model = f'{code}/nnx_net.py:Net'
  start, frozen = str(tmp_path / 'start'), str(tmp_path / 'frozen')
  train.train_and_evaluate(config_for(data_dir, model, num_train_steps=0),
                           start)
  train.train_and_evaluate(config_for(data_dir, model, num_train_steps=8,
                                      freeze='^(conv|bn)/'), frozen)
  _, before = conftest.final_state(start)
  _, after = conftest.final_state(frozen)
  held = [before['params']['conv'], before['params']['bn'],
          before['model_state']['batch_stats']['bn']]
  kept = [after['params']['conv'], after['params']['bn'],
          after['model_state']['batch_stats']['bn']]
  for a, b in zip(jax.tree.leaves(held), jax.tree.leaves(kept)):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(before['params']['head']['kernel'],
                            after['params']['head']['kernel'])


# Real processes, killed mid-run (about 30 s for both): make test-all, CI.
@pytest.mark.slow
@pytest.mark.parametrize('kind', ['linen', 'nnx'])
def test_killed_run_resumes_bitwise(tmp_path, small_data_dir, code, kind):
  import resilience_test  # pylint: disable=g-import-not-at-top
  model = f'{code}/{kind}_net.py:Net'
  reference_dir = str(tmp_path / 'reference')
  config = conftest.tiny_config(small_data_dir, model=model,
                                num_train_steps=resilience_test.TOTAL_STEPS)
  train.train_and_evaluate(config, reference_dir)
  workdir = str(tmp_path / 'w')
  killed = resilience_test.run_main(
      workdir, small_data_dir, f'--config.model={model}',
      env={'TRAINER_FAULT': 'kill:step:30'})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  train.train_and_evaluate(
      conftest.tiny_config(small_data_dir, model=model,
                           num_train_steps=resilience_test.TOTAL_STEPS),
      workdir)
  conftest.assert_same_run(workdir, reference_dir,
                           resilience_test.TOTAL_STEPS)
