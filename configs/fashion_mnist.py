"""The quick-start recipe on local Fashion-MNIST IDX files (no download).

The files come from Debian's `dataset-fashion-mnist` package.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'fashion_mnist'
  config.data_dir = '/usr/share/datasets/fashion-mnist'
  return config
