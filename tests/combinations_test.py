"""Every pair of training options trains together: two in-process steps of
train_and_evaluate each, on a tiny image folder, with finite results and a
checkpoint."""

import itertools
import json
import math
import os

import jax
import numpy as np
import pytest

import config_rules
import conftest
import plots
import train

# Each option as the config overrides that turn it on. model_kwargs are
# merged, not replaced, when both options of a pair set them.
OPTIONS = {
    'ema': {'ema_decay': 0.9, 'eval_with_ema': True},
    'accum': {'grad_accum_steps': 2},
    'augment': {'augment': 'crop_flip'},
    'validation': {'validation_fraction': 0.25},
    'stream': {'data_loading': 'stream'},
    'on_device': {'data_on_device': True},
    'bf16': {'model_kwargs': {'dtype': 'bfloat16'}},
    'smoothing': {'label_smoothing': 0.1},
    'clip': {'grad_clip_norm': 1.0},
    'dropout': {'model_kwargs': {'dropout_rate': 0.5}},
    # ResNet-18's layout with the CIFAR stem, at the narrowest widths.
    'small_stem': {'model': 'resnet18', 'model_kwargs': {
        'stem': 'small', 'stem_width': 4, 'widths': (4, 4, 4, 4)}},
}
PAIRS = list(itertools.combinations(OPTIONS, 2))
# Pairs no run can honour: refused by name before anything is made.
REFUSED = {('stream', 'on_device'):
               'data_on_device needs the training set in memory'}

# Two steps; the last one ends the run, so it is evaluated and saved.
NUM_STEPS = 2
CLASSES = tuple('abcdef')  # More than 5: top-5 accuracy is reported too.


def pair_config(data_dir, names):
  """conftest.tiny_config on the image folder, with the options `names`.

  The model is the MLP at 8 hidden units (the fastest to compile) unless an
  option picks another; each option's model_kwargs are added to the rest.
  """
  config = conftest.tiny_config(
      data_dir, dataset='custom', data_loading='memory', model='mlp',
      batch_size=4, eval_batch_size=4, num_train_steps=NUM_STEPS)
  model_kwargs = config.model_kwargs.to_dict()
  for name in names:
    overrides = dict(OPTIONS[name])
    model_kwargs.update(overrides.pop('model_kwargs', {}))
    config.update(overrides)
  if config.model == 'mlp':
    model_kwargs['hidden'] = 8
  config.model_kwargs = model_kwargs
  return config


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  """8x8 RGB images of 6 classes: 24 to train on, 6 to test. An image folder
  is a source that can be streamed or held in memory."""
  return conftest.make_image_folder(
      str(tmp_path_factory.mktemp('combinations')), classes=CLASSES,
      num_train=4, num_test=1, size=(8, 8))


@pytest.fixture(scope='module', autouse=True)
def cheap_compiles():
  """XLA's least optimized programs: every run compiles a train step of its
  own, which then runs twice, in milliseconds at any optimization; a
  ResNet's step compiles in 40% less time."""
  before = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', before)


@pytest.fixture
def plotted(monkeypatch):
  """The runs' two figures, recorded instead of drawn: matplotlib takes about
  a second a run, more than a warm run's training, and no option here but
  validation changes them (plots_test.py draws both, with validation)."""
  calls = {}
  for name in ('plot_history', 'plot_predictions'):
    monkeypatch.setattr(plots, name, lambda *args, name=name:
                        calls.update({name: args}))
  return calls


def test_pair_config_merges_model_kwargs(image_folder):
  config = pair_config(image_folder, ('bf16', 'dropout'))
  assert config.model == 'mlp'
  assert config.model_kwargs.to_dict() == {
      'dtype': 'bfloat16', 'dropout_rate': 0.5, 'hidden': 8}
  config = pair_config(image_folder, ('small_stem', 'bf16'))
  assert config.model == 'resnet18'
  assert config.model_kwargs.to_dict() == {
      'dtype': 'bfloat16', 'stem': 'small',
      'stem_width': 4, 'widths': (4, 4, 4, 4)}


def _numbers(record: dict) -> dict:
  return {k: v for k, v in record.items()
          if k.startswith(('train_', 'validation_', 'test_', 'best_'))
          and isinstance(v, float)}


@pytest.mark.slow  # 55 whole runs, each compiling its own step: test-all.
@pytest.mark.parametrize('names', PAIRS, ids=['+'.join(p) for p in PAIRS])
def test_two_steps_of_every_pair_of_options(image_folder, tmp_path, plotted,
                                            names):
  workdir = str(tmp_path / 'w')
  if names in REFUSED:
    with pytest.raises(config_rules.ConfigError, match=REFUSED[names]):
      train.train_and_evaluate(pair_config(image_folder, names), workdir)
    assert not os.path.exists(workdir)
    return
  summary = train.train_and_evaluate(pair_config(image_folder, names),
                                     workdir)
  assert summary['final_step'] == NUM_STEPS
  on_disk = json.load(open(os.path.join(workdir, 'summary.json')))
  numbers = _numbers(on_disk)
  splits = ('train', 'validation', 'test') if 'validation' in names else (
      'train', 'test')
  assert {f'{split}_{metric}' for split in splits for metric in (
      'loss', 'accuracy', 'top5_accuracy')} <= set(numbers)
  for record in on_disk['history']:
    numbers.update({f'history_{k}': v for k, v in _numbers(record).items()})
  not_finite = {k: v for k, v in numbers.items() if not math.isfinite(v)}
  assert not not_finite
  assert conftest.checkpoint_steps(workdir) == [NUM_STEPS]
  # What the figures would show: the history, and a class for each of the
  # 6 test images.
  assert plotted['plot_history'][0] == on_disk['history']
  images, labels, predicted, class_names, _ = plotted['plot_predictions']
  assert images.shape == (6, 8, 8, 3) and list(class_names) == list(CLASSES)
  assert len(labels) == 6 and set(np.asarray(predicted)) <= set(range(6))
