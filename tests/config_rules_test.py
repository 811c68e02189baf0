"""Tests for config_rules.py: values refused before a run starts."""

import importlib
import logging as std_logging
import os
import re

import pytest

import config_rules
import conftest
from configs import default


@pytest.mark.parametrize('key,value,match', [
    ('optimizer', 'rmsprop',
     "unknown optimizer 'rmsprop'; accepted: sgd, momentum, adam, adamw"),
    ('lr_schedule', 'step', "unknown lr_schedule 'step'"),
    ('model', 'vit', "unknown model 'vit'; accepted: cnn, mlp, resnet18"),
    ('learning_rate', 0.0, 'learning_rate must be > 0'),
    ('batch_size', -4, 'batch_size must be > 0'),
    ('num_epochs', 0, 'num_epochs must be > 0'),
    ('num_train_steps', -2, 'num_train_steps must be -1'),
    ('learning_rate', float('nan'), 'learning_rate must be a finite number'),
    ('momentum', float('inf'), 'momentum must be a finite number'),
    ('momentum', -0.5, 'momentum must be in [0, 1), got -0.5'),
    ('log_every_steps', 0, 'log_every_steps must be > 0'),
    ('checkpoint_every_steps', -10, 'checkpoint_every_steps must be > 0'),
    ('grad_accum_steps', 0, 'grad_accum_steps must be > 0'),
    ('grad_clip_norm', -1.0, 'grad_clip_norm must be >= 0'),
    ('ema_decay', 1.0, 'ema_decay must be in [0, 1), got 1.0'),
    ('ema_decay', -0.1, 'ema_decay must be in [0, 1), got -0.1'),
    ('label_smoothing', 1.5, 'label_smoothing must be in [0, 1)'),
    ('eval_with_ema', True, 'eval_with_ema needs ema_decay > 0'),
    ('validation_fraction', 1.0, 'validation_fraction must be in [0, 1)'),
    ('channels', 2, 'channels must be 0 (from the first image), 1'),
    ('image_size', -1, 'image_size must be >= 0, got -1'),
    ('data_loading', 'disk', "unknown data_loading 'disk'; accepted: auto, "
                             "memory, stream"),
    # Fine-tuning and preprocessing keys.
    ('init_exclude', '(fc', "init_exclude '(fc' is not a regular expression"),
    ('normalize', 'imagenett', "normalize 'imagenett' is not usable"),
    ('freeze', 'layer1', "freeze 'layer1' matches no parameter of the model"),
    ('lr_multipliers', 'Dense=x', "lr_multipliers item 'Dense=x' is not"),
    ('eval_crop_pct', 0.0, 'eval_crop_pct must be in (0, 1], got 0.0'),
    ('eval_crop_pct', 1.5, 'eval_crop_pct must be in (0, 1], got 1.5'),
    ('interpolation', 'nearest',
     "unknown interpolation 'nearest'; accepted: bilinear, bicubic"),
    ('trackers', 'tensorboard',
     "unknown tracker 'tensorboard' in trackers 'tensorboard'; accepted: "
     "mlflow, wandb"),
])
def test_bad_value_is_named(key, value, match):
  config = default.get_config()
  config[key] = value
  with pytest.raises(config_rules.ConfigError, match=re.escape(match)):
    config_rules.validate_config(config, device_count=1)


def test_momentum_optimizer_needs_momentum():
  config = default.get_config()
  config.optimizer, config.momentum = 'momentum', 0.0
  with pytest.raises(config_rules.ConfigError,
                     match='optimizer momentum needs momentum > 0, got 0.0'):
    config_rules.validate_config(config, device_count=1)


@pytest.mark.parametrize('kwargs,match', [
    ({'widths': [8]}, "unknown config key 'model_kwargs.widths' for model "
                      "cnn; accepted: model_kwargs.dropout_rate, "
                      "model_kwargs.dtype"),
    ({'dropout_rate': -0.1},
     r'model_kwargs: dropout_rate must be in \[0, 1\), got -0.1'),
    ({'dtype': 'float16'},
     "model_kwargs: unknown dtype 'float16'; accepted: float32, bfloat16"),
    # Typed on the command line for a key the config does not set: text.
    ({'dropout_rate': 'lots'}, "model_kwargs: bad value 'lots' for "
     "model_kwargs.dropout_rate of model cnn; accepted: a number"),
])
def test_bad_model_kwargs_are_named(kwargs, match):
  config = default.get_config()
  for key, value in kwargs.items():
    config.model_kwargs[key] = value
  with pytest.raises(config_rules.ConfigError, match=match):
    config_rules.validate_config(config, device_count=1)


def test_weight_decay_only_for_optimizers_that_take_it():
  config = default.get_config()
  config.optimizer, config.weight_decay = 'adam', 1e-4
  with pytest.raises(config_rules.ConfigError,
                     match='optimizer adam takes no weight_decay'):
    config_rules.validate_config(config, device_count=1)


def test_batch_size_must_divide_by_devices():
  config = default.get_config()
  config.batch_size = 30
  with pytest.raises(config_rules.ConfigError,
                     match='30 is not divisible by the 4'):
    config_rules.validate_config(config, device_count=4)


def test_data_on_device_needs_one_process():
  config = default.get_config()
  config.data_on_device = True
  config_rules.validate_config(config, device_count=1, process_count=1)
  with pytest.raises(config_rules.ConfigError, match='works in one process'):
    config_rules.validate_config(config, device_count=2, process_count=2)


def test_a_warm_up_needs_the_schedule_that_uses_it():
  config = default.get_config()
  config.lr_schedule, config.warmup_epochs = 'cosine', 1.0
  with pytest.raises(config_rules.ConfigError,
                     match='warmup_epochs 1.0 needs lr_schedule warmup_cosine'):
    config_rules.validate_config(config, device_count=1)


def test_keys_the_source_or_optimizer_does_not_use_are_warned(caplog,
                                                              tmp_path):
  data_dir = conftest.make_idx_dir(str(tmp_path))
  config = default.get_config()
  config.data_dir, config.channels, config.image_size = data_dir, 3, 32
  config.data_loading, config.optimizer, config.momentum = 'stream', 'adam', 0.5
  with caplog.at_level(std_logging.WARNING):
    config_rules.warn_unused(config)
  lines = [r.getMessage() for r in caplog.records]
  assert lines == [
      'image_size=32 is not used: it applies to image folders, and idx data '
      'keeps its own image shape',
      'channels=3 is not used: it applies to image folders, and idx data '
      'keeps its own image shape',
      'data_loading=stream is not used: IDX files are always read into memory',
      'momentum=0.5 is not used by optimizer adam (its b1 is 0.9)']
  caplog.clear()
  with caplog.at_level(std_logging.WARNING):
    config_rules.warn_unused(default.get_config())
  assert not caplog.records


@pytest.mark.parametrize('name', sorted(
    f[:-3] for f in os.listdir(os.path.join(conftest.ROOT, 'configs'))
    if f.endswith('.py') and f not in ('__init__.py', 'workdir.py')))
def test_every_shipped_config_passes_the_checks(name):
  # configs/workdir.py needs a workdir's saved config (its own tests).
  config = importlib.import_module(f'configs.{name}').get_config()
  config_rules.validate_config(config, device_count=1)
