"""The Flax quick start: MNIST from tfds, the 2-conv CNN, SGD with momentum."""

import ml_collections


def get_config():
  """Returns the default hyperparameters."""
  config = ml_collections.ConfigDict()
  # Data: a tfds name; data_dir '' means tfds's default folder, a folder of
  # MNIST-format IDX files is read directly, any other folder is tfds's.
  config.dataset = 'mnist'
  config.data_dir = ''
  config.model = 'cnn'
  # sgd (uses `momentum`; 0 means plain SGD), momentum (sgd, momentum > 0),
  # adam, adamw (uses `weight_decay`).
  config.optimizer = 'sgd'
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.weight_decay = 1e-4
  # constant, cosine or warmup_cosine (linear warm-up for warmup_epochs).
  config.lr_schedule = 'constant'
  config.warmup_epochs = 0.0
  config.batch_size = 32
  config.eval_batch_size = 1000
  config.num_epochs = 10
  # -1: derived from num_epochs; a positive value stops there (short runs).
  config.num_train_steps = -1
  config.seed = 0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.max_checkpoints_to_keep = 3
  return config
