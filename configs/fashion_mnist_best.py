"""The most accurate Fashion-MNIST recipe here that trains in 2 hours on
two CPU cores.

The wide plain ConvNet of models.py (2.0 M parameters) for 18 epochs:
SGD with momentum 0.9, warm-up + cosine decay, masked weight decay, label
smoothing, random crops and flips, a parameter EMA for evaluation, and
test-time flips. 3,000 training images are held out, and the checkpoint
kept as best is chosen on them, not on the test set.
docs/augmentation.md (Measured) says what it reaches and how long it takes.
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.model = 'convnet'
  config.validation_fraction = 0.05
  config.optimizer = 'momentum'
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.lr_schedule = 'warmup_cosine'
  config.warmup_epochs = 1.0
  config.label_smoothing = 0.1
  # Clothes may be mirrored (digits should not be).
  config.augment = 'crop_flip'
  config.eval_flip = True
  config.ema_decay = 0.999
  config.eval_with_ema = True
  config.batch_size = 128
  config.num_epochs = 18
  config.log_every_steps = 200
  config.checkpoint_every_steps = 2000
  return config
