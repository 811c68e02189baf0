"""The quick-start CNN trained for speed to its 10-epoch accuracy.

Same model and data as configs/fashion_mnist.py; a shorter schedule with
Adam and warm-up + cosine decay reaches the accuracy the quick-start recipe
reaches after 10 epochs in a fraction of the time (docs/performance.md).
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.optimizer = 'adam'
  config.learning_rate = 2e-3
  config.lr_schedule = 'warmup_cosine'
  config.warmup_epochs = 0.2
  config.num_epochs = 3
  config.log_every_steps = 500
  config.checkpoint_every_steps = 1875
  return config
