"""Flax linen classifiers, chosen by name with `create_model`."""

from typing import Callable

import flax.linen as nn


class CNN(nn.Module):
  """The Flax quick-start CNN: two conv/avg-pool blocks and two dense layers."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(features=32, kernel_size=(3, 3))(x)
    x = nn.relu(x)
    x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = nn.Conv(features=64, kernel_size=(3, 3))(x)
    x = nn.relu(x)
    x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(features=256)(x)
    x = nn.relu(x)
    x = nn.Dense(features=self.num_classes)(x)
    return x


class MLP(nn.Module):
  """A small fully connected baseline: flatten, Dense(512) relu, Dense(C)."""
  num_classes: int = 10
  hidden: int = 512

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes)(x)


MODELS: dict[str, Callable[..., nn.Module]] = {'cnn': CNN, 'mlp': MLP}


def create_model(name: str, num_classes: int) -> nn.Module:
  """Returns the model registered under `name`."""
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; accepted: {sorted(MODELS)}')
  return MODELS[name](num_classes=num_classes)
