"""A ViT recipe for Fashion-MNIST that fits half an hour on two CPU cores.

ViT-Ti (timm's vit_tiny layout, 5.4 M parameters here) on 7x7 patches of
the 28 px images (16 tokens and a class token), AdamW with warm-up + cosine
decay, stochastic depth, label smoothing and random crops and flips. ViTs
want far longer schedules and stronger augmentation on small data than this
budget allows; the README (Results) says what one epoch reaches.
"""

import ml_collections

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.model = 'vit_tiny'
  config.model_kwargs = ml_collections.ConfigDict(
      {'patch_size': 7, 'drop_path_rate': 0.05})
  config.optimizer = 'adamw'
  config.learning_rate = 1e-3
  config.weight_decay = 0.05
  config.lr_schedule = 'warmup_cosine'
  config.warmup_epochs = 0.1
  config.label_smoothing = 0.1
  config.augment = 'crop_flip'
  config.validation_fraction = 0.1
  config.batch_size = 128
  config.num_epochs = 1
  config.log_every_steps = 50
  config.checkpoint_every_steps = 100
  return config
