"""A ResNet recipe for Fashion-MNIST from the local IDX files.

The CIFAR-style ResNet-20 (0.27 M parameters, 3x3 stem for 28 px images)
with BatchNorm, SGD with momentum 0.9, warm-up + cosine decay, masked weight
decay, label smoothing, random crops and flips, and a parameter EMA used for
evaluation.
The README (Results) says what it reaches and how long it takes.
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.model = 'resnet20'
  config.optimizer = 'momentum'
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.lr_schedule = 'warmup_cosine'
  config.warmup_epochs = 1.0
  config.label_smoothing = 0.1
  # Clothes may be mirrored (digits should not be).
  config.augment = 'crop_flip'
  config.ema_decay = 0.999
  config.eval_with_ema = True
  config.batch_size = 128
  config.num_epochs = 30
  config.log_every_steps = 200
  config.checkpoint_every_steps = 2000
  return config
