"""The config's rules: what it must satisfy before a run, and what a resumed
run may change.

`validate_config` refuses values no run can use, with one line naming the
value and what is accepted. `resume_signature` lists what a checkpoint and
the config resuming from it must share; `RESUME_CHANGES` what may differ and
what the difference means (docs/configuration.md has both as tables).
"""

import math
import re

from absl import logging
import ml_collections

import augmentation
import checkpointing
import controls
import data_sources
import image_folder
import imported_models
import input_pipeline
import models
import optimizers
import steps
import trackers


# Keys that may differ between a checkpoint and the run resuming from it, and
# what the change means. Keys that must not differ are in resume_signature.
RESUME_CHANGES = {
    'learning_rate': 'steps after the checkpoint use the new value',
    'momentum': 'steps after the checkpoint use the new value',
    'weight_decay': 'steps after the checkpoint use the new value',
    'grad_clip_norm': 'steps after the checkpoint use the new value',
    'label_smoothing': 'steps after the checkpoint use the new value',
    'ema_decay': 'steps after the checkpoint use the new value',
    'eval_with_ema': 'evaluation and the best checkpoint use the other '
                     'parameters from now on',
    'augment': 'steps after the checkpoint see other augmented images',
    'augment_kwargs': 'steps after the checkpoint see other augmented images',
    'freeze': 'steps after the checkpoint train other parameters',
    'init_from': 'none: it is used at step 0 only',
    'init_exclude': 'none: it is used at step 0 only',
    'lr_multipliers': 'steps after the checkpoint use the new factors',
    'num_epochs': 'the run now ends at another step',
    'num_train_steps': 'the run now ends at another step',
    'eval_batch_size': 'test metrics may differ in the last float digits '
                       '(another summation order)',
    'data_dir': 'the same examples (checked) are read from another place',
    'dataset': 'the same examples and class names (checked)',
    'data_loading': 'the same examples (checked) are read another way',
    'prefetch_batches': 'none: the same batches, sent ahead or not',
    'data_on_device': 'none: the same batches, gathered on the device or '
                      'the host',
    'skip_bad_images': 'the same examples (checked): no file was left out',
    'test_fraction': 'the same examples (checked): the folder has a test '
                     'split of its own',
    'split_seed': 'the same examples (checked): no hold-out is drawn',
    'eval_flip': 'evaluation and the best checkpoint use mirrored images '
                 'too from now on (or no longer)',
    'class_weights': 'steps after the checkpoint weigh the loss anew',
    'sampling': 'steps after the checkpoint see other batches',
    'early_stopping_patience': 'the run may now stop at another epoch',
    'early_stopping_min_delta': 'the run may now stop at another epoch',
    'early_stopping_metric': 'the run may now stop at another epoch',
    'plateau_patience': 'the learning rate is cut by the new rule, counted '
                        'over all epochs so far',
    'plateau_factor': 'the learning rate is cut by the new rule, counted '
                      'over all epochs so far',
    'plateau_min_delta': 'the learning rate is cut by the new rule, counted '
                         'over all epochs so far',
    'trackers': 'none in the results: steps after the checkpoint are logged '
                'to the new trackers (each continues its own run of this '
                'workdir)',
    'tracker_project': 'none in the results: a tracker that starts its run '
                       'from now on puts it in the new project (an MLflow '
                       'run already started stays where it is)',
}

_POSITIVE = ('learning_rate', 'batch_size', 'eval_batch_size', 'num_epochs',
             'log_every_steps', 'checkpoint_every_steps',
             'max_checkpoints_to_keep', 'grad_accum_steps')
_NON_NEGATIVE = ('weight_decay', 'warmup_epochs', 'grad_clip_norm', 'seed',
                 'split_seed', 'early_stopping_patience',
                 'early_stopping_min_delta', 'plateau_min_delta')
# Fractions and decay rates: in [0, 1).
_FRACTIONS = ('momentum', 'label_smoothing', 'ema_decay',
              'validation_fraction', 'test_fraction')


class ConfigError(ValueError):
  """A config value that cannot be used; the message names it."""


def validate_config(config: ml_collections.ConfigDict, device_count: int,
                    process_count: int = 1, training: bool = True):
  """Checks values a run cannot fix later; raises ConfigError.

  With `training` False (eval and predict, which take a saved config and
  overrides) the training batch need not suit this job's devices.
  """
  for key, value in config.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f'{key} must be a finite number, got {value!r}')
  for key in _POSITIVE:
    if not config[key] > 0:
      raise ConfigError(f'{key} must be > 0, got {config[key]!r}')
  for key in _NON_NEGATIVE:
    if not config[key] >= 0:
      raise ConfigError(f'{key} must be >= 0, got {config[key]!r}')
  for key in _FRACTIONS:
    if not 0 <= config[key] < 1:
      raise ConfigError(f'{key} must be in [0, 1), got {config[key]!r}')
  if config.image_size < 0 or config.prefetch_batches < 0:
    key = 'image_size' if config.image_size < 0 else 'prefetch_batches'
    raise ConfigError(f'{key} must be >= 0, got {config[key]}')
  if config.channels not in (0, 1, 3):
    raise ConfigError(f'channels must be 0 (from the first image), 1 '
                      f'(grayscale) or 3 (RGB), got {config.channels!r}')
  if config.data_on_device and process_count > 1:
    raise ConfigError(f'data_on_device works in one process; this run has '
                      f'{process_count} (each would hold the whole set)')
  try:
    re.compile(config.init_exclude)
  except re.error as e:
    raise ConfigError(f'init_exclude {config.init_exclude!r} is not a regular '
                      f'expression ({e}); accepted: a Python regex') from None
  try:
    augmentation.parse_normalize(config.normalize)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.warmup_epochs and config.lr_schedule != 'warmup_cosine':
    raise ConfigError(f'warmup_epochs {config.warmup_epochs} needs '
                      f'lr_schedule warmup_cosine (got {config.lr_schedule!r})'
                      f'; accepted: warmup_epochs 0, or lr_schedule '
                      f'warmup_cosine')
  try:
    controls.parse_class_weights(config.class_weights)
  except controls.ControlError as e:
    raise ConfigError(str(e)) from None
  if not config.plateau_patience >= 1:
    raise ConfigError(f'plateau_patience must be >= 1 (epochs), got '
                      f'{config.plateau_patience!r}')
  if not 0 < config.plateau_factor < 1:
    raise ConfigError(f'plateau_factor must be in (0, 1), got '
                      f'{config.plateau_factor!r}')
  if not 0 < config.eval_crop_pct <= 1:
    raise ConfigError(f'eval_crop_pct must be in (0, 1], got '
                      f'{config.eval_crop_pct!r}')
  if config.interpolation not in image_folder.INTERPOLATIONS:
    raise ConfigError(f'unknown interpolation {config.interpolation!r}; '
                      f'accepted: {", ".join(image_folder.INTERPOLATIONS)}')
  if config.data_on_device and config.data_loading == 'stream':
    raise ConfigError("data_on_device needs the training set in memory, and "
                      "data_loading 'stream' reads it from files; accepted: "
                      "data_loading memory or auto, or data_on_device false")
  if config.eval_with_ema and not config.ema_decay:
    raise ConfigError('eval_with_ema needs ema_decay > 0 (0 keeps no EMA)')
  if config.num_train_steps < -1:
    raise ConfigError(f'num_train_steps must be -1 (derive from num_epochs), '
                      f'0 (evaluate and save the initial state) or > 0, got '
                      f'{config.num_train_steps}')
  try:
    # Installed or not matters only where the run logs: training.
    trackers.parse_trackers(config.trackers, check_installed=training)
  except trackers.TrackerError as e:
    raise ConfigError(str(e)) from None
  try:
    augmentation.parse_augment(config.augment)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for key, table in (('optimizer', optimizers.OPTIMIZERS),
                     ('lr_schedule', optimizers.LR_SCHEDULES),
                     ('model', models.MODELS),
                     ('data_loading', data_sources.LOADINGS),
                     ('sampling', input_pipeline.SAMPLINGS)):
    if config[key] not in table and not (
        key == 'model' and imported_models.is_import_path(config[key])):
      raise ConfigError(f'unknown {key} {config[key]!r}; accepted: '
                        f'{", ".join(table)}' + (
                            f', or an import path {imported_models.FORMS}'
                            if key == 'model' else ''))
  try:
    optimizers.check_settings(config.optimizer, config.momentum,
                              config.weight_decay)
  except optimizers.OptimizerError as e:
    raise ConfigError(str(e)) from None
  try:
    augmentation.check_options(config.augment,
                               config.augment_kwargs.to_dict())
  except ValueError as e:
    raise ConfigError(str(e)) from None
  kwargs = config.model_kwargs.to_dict()
  try:
    accepted = models.model_options(config.model)
  except imported_models.ModelError as e:
    raise ConfigError(str(e) if training else (
        f'the model of this run is no longer importable here: {e}')) from None
  for key in kwargs:
    if key not in accepted:
      raise ConfigError(
          f"unknown config key 'model_kwargs.{key}' for model "
          f"{config.model}; accepted: "
          f"{', '.join(f'model_kwargs.{k}' for k in sorted(accepted))}")
  try:
    model = models.create_model(config.model, 10, **kwargs)
  except (ValueError, TypeError) as e:
    raise ConfigError(f'model_kwargs: {e}') from None
  # An import-path model may need the data's image shape to build: its
  # parameter rules are checked with the data (check_model).
  if (config.freeze or config.lr_multipliers) and not (
      imported_models.is_import_path(config.model)):
    check_parameter_rules(config, model, (32, 32, 3))
  for key in ('batch_size', 'eval_batch_size') if training else (
      'eval_batch_size',):
    if config[key] % device_count:
      raise ConfigError(f'{key} {config[key]} is not divisible by the '
                        f'{device_count} devices; use a multiple of '
                        f'{device_count}')


def check_parameter_rules(config: ml_collections.ConfigDict, model,
                          image_shape):
  """ConfigError unless every freeze / lr_multipliers pattern matches a
  parameter of `model`."""
  if not (config.freeze or config.lr_multipliers):
    return
  try:
    optimizers.check_parameter_rules(
        config.freeze, config.lr_multipliers,
        models.parameter_paths(model, image_shape))
  except optimizers.OptimizerError as e:
    raise ConfigError(str(e)) from None


def watched_metric(config: ml_collections.ConfigDict,
                   has_validation: bool) -> str:
  """The epoch metric early stopping and the plateau schedule watch;
  ConfigError if the run has no such metric."""
  names = controls.metric_names(has_validation)
  metric = (config.early_stopping_metric or
            controls.selection_metric(has_validation))
  if metric not in names:
    raise ConfigError(f'early_stopping_metric {metric!r} is not a metric of '
                      f'this run; accepted: {", ".join(names)}')
  return metric


def check_model(config: ml_collections.ConfigDict, model, image_shape,
                num_classes: int):
  """What only the data can show of an import-path model: that it gives
  (batch, num_classes) logits for these images, and that freeze and
  lr_multipliers match its parameters. ConfigError otherwise."""
  if not imported_models.is_import_path(config.model):
    return
  try:
    imported_models.check_output(model, config.model, image_shape,
                                 num_classes)
  except imported_models.ModelError as e:
    raise ConfigError(str(e)) from None
  check_parameter_rules(config, model, image_shape)
  try:
    steps.check_frozen_norms(model, image_shape, config.freeze)
  except steps.FrozenNormError as e:
    raise ConfigError(str(e)) from None


def warn_unused(config: ml_collections.ConfigDict):
  """Logs a warning for each key set to a value its source or optimizer
  does not use (a run that would silently differ from what was asked)."""
  kind = data_sources.source_kind(config.data_dir)
  if kind not in ('folder', 'flat'):
    for key, unset in (('image_size', 0), ('channels', 0),
                       ('eval_crop_pct', 1.0), ('interpolation', 'bilinear')):
      if config[key] != unset:
        logging.warning('%s=%r is not used: it applies to image folders, '
                        'and %s data keeps its own image shape', key,
                        config[key], kind)
  if kind == 'idx' and config.data_loading == 'stream':
    logging.warning('data_loading=stream is not used: IDX files are always '
                    'read into memory')
  if config.optimizer in ('adam', 'adamw') and config.momentum not in (
      0.0, 0.9):
    logging.warning('momentum=%r is not used by optimizer %s (its b1 is '
                    '0.9)', config.momentum, config.optimizer)


def check_schedule(lr_schedule: str, warmup_epochs: float, warmup_steps: int,
                   total_steps: int):
  """Refuses a warm-up that would not end before the run does (the
  learning rate would never reach its peak)."""
  if lr_schedule == 'warmup_cosine' and warmup_steps >= total_steps > 0:
    raise ConfigError(
        f'warmup_epochs {warmup_epochs} is {warmup_steps} steps, not shorter '
        f'than the run ({total_steps} steps); accepted: a warm-up shorter '
        f'than the run, or lr_schedule cosine')


def resume_signature(state, config, dataset, total_updates: int,
                     warmup_updates: int) -> dict:
  """What a checkpoint and the config resuming from it must share.

  Each field, if changed, would make the resumed run differ from any
  uninterrupted one in a way no log line can fix: another model or state,
  another batch for every later step (batch_size, seed, data, accumulation),
  or another learning-rate curve. What may change is in RESUME_CHANGES.
  """
  schedule_steps = None if config.lr_schedule == 'constant' else {
      'total_steps': total_updates, 'warmup_steps': warmup_updates}
  return checkpointing.signature(
      state, model=config.model, model_kwargs=config.model_kwargs.to_dict(),
      image_shape=list(dataset.train.image_shape),
      num_classes=dataset.num_classes, optimizer=config.optimizer,
      lr_schedule=config.lr_schedule, schedule_steps=schedule_steps,
      normalize=config.normalize, eval_crop_pct=config.eval_crop_pct,
      interpolation=config.interpolation,
      batch_size=config.batch_size, grad_accum_steps=config.grad_accum_steps,
      seed=config.seed, data=data_sources.fingerprint(dataset))


def log_config_changes(saved: dict, config: ml_collections.ConfigDict,
                       step: int):
  """Says which allowed config changes a resumed run picks up, and what they
  mean."""
  for key, meaning in RESUME_CHANGES.items():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):  # As `saved` has it.
      value = value.to_dict()
    if key in saved and saved[key] != value:
      logging.warning('Resuming at step %d with %s=%r (the checkpoint was '
                      'written with %r): %s', step, key, value, saved[key],
                      meaning)
