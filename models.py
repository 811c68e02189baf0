"""Flax linen classifiers, chosen by name from MODELS.

Every model is called as `model(images, train=...)`: `train=True` updates
BatchNorm statistics (the `batch_stats` collection) and draws dropout and
stochastic depth masks (the `dropout` RNG stream); `train=False` uses the
running statistics and no dropout. `dtype` sets the compute precision;
parameters stay float32. The ViTs of vit.py and the ConvNeXts of
convnext.py are registered here too.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

import convnext
import imported_models
import layers
import vit

# The compute dtypes and stochastic depth are layers.py's, shared with
# vit.py and convnext.py.
DTYPES = layers.DTYPES
_dtype = layers.compute_dtype


class CNN(nn.Module):
  """The Flax quick-start CNN: two conv/avg-pool blocks and two dense layers.

  `dropout_rate` > 0 adds dropout before each dense layer (0: the quick start
  exactly).
  """
  num_classes: int = 10
  dropout_rate: float = 0.0
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = _dtype(self.dtype)
    x = x.astype(dtype)
    x = nn.Conv(features=32, kernel_size=(3, 3), dtype=dtype)(x)
    x = nn.relu(x)
    x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = nn.Conv(features=64, kernel_size=(3, 3), dtype=dtype)(x)
    x = nn.relu(x)
    x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(features=256, dtype=dtype)(x)
    x = nn.relu(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(features=self.num_classes, dtype=dtype)(x)
    return x


class MLP(nn.Module):
  """A small fully connected baseline: flatten, Dense(hidden) relu, Dense(C)."""
  num_classes: int = 10
  hidden: int = 512
  dropout_rate: float = 0.0
  dtype: str = 'float32'

  def __post_init__(self):
    if not (isinstance(self.hidden, int) and self.hidden > 0):
      raise ValueError(f'hidden must be a positive integer, got '
                       f'{self.hidden!r}')
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = _dtype(self.dtype)
    x = x.reshape((x.shape[0], -1)).astype(dtype)
    x = nn.relu(nn.Dense(self.hidden, dtype=dtype)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=dtype)(x)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a shortcut (ResNet-18/34, ResNet-20)."""
  features: int
  strides: int
  conv: Callable
  norm: Callable
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = self.conv(self.features, (3, 3), self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    y = layers.DropPath(self.drop_path_rate)(y, deterministic=not train)
    if x.shape != y.shape:
      x = self.norm()(self.conv(self.features, (1, 1), self.strides)(x))
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a shortcut (ResNet-50)."""
  features: int
  strides: int
  conv: Callable
  norm: Callable
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.relu(self.norm()(self.conv(self.features, (1, 1))(x)))
    y = self.conv(self.features, (3, 3), self.strides)(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    y = layers.DropPath(self.drop_path_rate)(y, deterministic=not train)
    if x.shape != y.shape:
      x = self.norm()(self.conv(self.features * 4, (1, 1), self.strides)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A ResNet in the torchvision / Flax-imagenet layout.

  Attributes:
    stage_sizes: blocks per stage; each stage after the first halves the
      resolution in its first block.
    block: BasicBlock or Bottleneck.
    num_classes: output classes.
    widths: channels of each stage (before the bottleneck's x4).
    stem: 'imagenet' (7x7 stride-2 conv and 3x3 max-pool, for 224 px) or
      'small' (one 3x3 stride-1 conv, no pool, for 28-32 px images).
    stem_width: channels of the stem.
    dropout_rate: dropout before the classifier.
    dtype: compute precision, 'float32' or 'bfloat16'.
    bn_momentum: decay of BatchNorm's running statistics.
    drop_path_rate: stochastic depth of the residual branches, rising
      linearly over the blocks from 0 to this rate (timm's rule).
  """
  stage_sizes: Sequence[int]
  block: Any
  num_classes: int = 1000
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = 'imagenet'
  stem_width: int = 64
  dropout_rate: float = 0.0
  dtype: str = 'float32'
  bn_momentum: float = 0.9
  drop_path_rate: float = 0.0

  def __post_init__(self):
    # Checked when the model is built, so that a bad option is refused by
    # name before training (config_rules builds every configured model).
    if self.stem not in ('imagenet', 'small'):
      raise ValueError(f'unknown stem {self.stem!r}; accepted: imagenet, '
                       f'small')
    if len(self.widths) != len(self.stage_sizes) or not all(
        isinstance(w, int) and w > 0 for w in self.widths):
      raise ValueError(f'widths {tuple(self.widths)} must give one positive '
                       f'width per stage ({len(self.stage_sizes)} stages)')
    if not (isinstance(self.stem_width, int) and self.stem_width > 0):
      raise ValueError(f'stem_width must be a positive integer, got '
                       f'{self.stem_width!r}')
    if not 0 <= self.bn_momentum < 1:
      raise ValueError(f'bn_momentum must be in [0, 1), got '
                       f'{self.bn_momentum!r}')
    layers.check_drop_path_rate(self.drop_path_rate)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = _dtype(self.dtype)

    def conv(features, kernel, strides=1):
      return nn.Conv(features, kernel, (strides, strides), padding=[
          ((kernel[0] - 1) // 2,) * 2, ((kernel[1] - 1) // 2,) * 2],
                     use_bias=False, dtype=dtype,
                     kernel_init=nn.initializers.variance_scaling(
                         2.0, 'fan_out', 'normal'))

    def norm(**kwargs):
      # Statistics are always kept in float32, whatever the compute dtype.
      # use_running_average goes with the call, not the constructor, so that
      # training can switch a frozen part to its running statistics
      # (steps.train_step).
      module = nn.BatchNorm(momentum=self.bn_momentum, epsilon=1e-5,
                            dtype=dtype, **kwargs)
      return functools.partial(module, use_running_average=not train)
    x = x.astype(dtype)
    if self.stem == 'imagenet':
      x = conv(self.stem_width, (7, 7), 2)(x)
      x = nn.relu(norm()(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      x = nn.relu(norm()(conv(self.stem_width, (3, 3))(x)))
    rates = iter(layers.drop_path_rates(self.drop_path_rate,
                                        sum(self.stage_sizes)))
    for stage, (blocks, width) in enumerate(zip(self.stage_sizes,
                                                self.widths)):
      for i in range(blocks):
        strides = 2 if stage > 0 and i == 0 else 1
        x = self.block(width, strides, conv, norm,
                       drop_path_rate=next(rates))(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=dtype)(x)


class ConvNet(nn.Module):
  """A plain (residual-free) network that is wide rather than deep.

  A 2x2 stem convolution, then one stage per width: a 3x3 convolution, a
  2x2 max-pool, BatchNorm and ReLU, and `convs_per_stage - 1` more 3x3
  convolutions with BatchNorm and ReLU at the pooled resolution; a global
  max-pool and a linear classifier. The layout follows the fast CIFAR-10
  networks of Keller Jordan's airbench (2024), with ReLU and a BatchNorm
  after the stem. On XLA's CPU backend its wide convolutions run well:
  the default widths (2.0 M parameters) train at about 200 images/s of
  28x28 at batch 128 on two cores, ResNet-20 (0.27 M) at about 330.

  Attributes:
    num_classes: output classes.
    widths: channels of each stage; each stage halves the resolution.
    stem_width: channels of the stem convolution.
    convs_per_stage: 3x3 convolutions in each stage (at least 1).
    dropout_rate: dropout before the classifier.
    dtype: compute precision, 'float32' or 'bfloat16'.
    bn_momentum: decay of BatchNorm's running statistics.
  """
  num_classes: int = 10
  widths: Sequence[int] = (64, 256, 256)
  stem_width: int = 24
  convs_per_stage: int = 2
  dropout_rate: float = 0.0
  dtype: str = 'float32'
  bn_momentum: float = 0.9

  def __post_init__(self):
    if not self.widths or not all(isinstance(w, int) and w > 0
                                  for w in self.widths):
      raise ValueError(f'widths {tuple(self.widths)} must be one or more '
                       f'positive integers')
    for key in ('stem_width', 'convs_per_stage'):
      value = getattr(self, key)
      if not (isinstance(value, int) and value > 0):
        raise ValueError(f'{key} must be a positive integer, got {value!r}')
    if not 0 <= self.bn_momentum < 1:
      raise ValueError(f'bn_momentum must be in [0, 1), got '
                       f'{self.bn_momentum!r}')
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = _dtype(self.dtype)

    def conv_norm_relu(x, features, kernel, padding='SAME', pool=False):
      x = nn.Conv(features, kernel, padding=padding, use_bias=False,
                  dtype=dtype)(x)
      if pool:
        x = nn.max_pool(x, (2, 2), (2, 2))
      x = nn.BatchNorm(use_running_average=not train,
                       momentum=self.bn_momentum, epsilon=1e-5,
                       dtype=dtype)(x)
      return nn.relu(x)
    x = conv_norm_relu(x.astype(dtype), self.stem_width, (2, 2), 'VALID')
    for width in self.widths:
      x = conv_norm_relu(x, width, (3, 3), pool=True)
      for _ in range(self.convs_per_stage - 1):
        x = conv_norm_relu(x, width, (3, 3))
    x = jnp.max(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=dtype)(x)


# Every accepted `config.model`: name -> constructor taking num_classes and
# the keyword arguments in `config.model_kwargs`.
MODELS: dict[str, Callable[..., nn.Module]] = {
    'cnn': CNN,
    'mlp': MLP,
    'resnet18': functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                                  block=BasicBlock),
    'resnet34': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                                  block=BasicBlock),
    'resnet50': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                                  block=Bottleneck),
    # The CIFAR ResNet-20 of He et al. (2016): 3 stages of 3 basic blocks,
    # 16/32/64 channels, a 3x3 stem.
    'resnet20': functools.partial(ResNet, stage_sizes=(3, 3, 3),
                                  block=BasicBlock, widths=(16, 32, 64),
                                  stem='small', stem_width=16),
    # A wide plain network for small images (ConvNet above).
    'convnet': ConvNet,
    # timm's vit_{tiny,small,base}_patch16_224 (patch_size 16 by default).
    'vit_tiny': functools.partial(vit.VisionTransformer, embed_dim=192,
                                  depth=12, num_heads=3),
    'vit_small': functools.partial(vit.VisionTransformer, embed_dim=384,
                                   depth=12, num_heads=6),
    'vit_base': functools.partial(vit.VisionTransformer, embed_dim=768,
                                  depth=12, num_heads=12),
    # timm's convnext_atto (its conv_mlp=True is the same computation with
    # 1x1 convolutions, which pretrained.py loads into the Dense layers) and
    # convnext_tiny.
    'convnext_atto': functools.partial(convnext.ConvNeXt, depths=(2, 2, 6, 2),
                                       dims=(40, 80, 160, 320)),
    'convnext_tiny': functools.partial(convnext.ConvNeXt, depths=(3, 3, 9, 3),
                                       dims=(96, 192, 384, 768)),
}


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
  """Returns the model registered under `name`, built with `kwargs`.

  Raises:
    ValueError: unknown name, or a keyword the model does not take (the
      message lists those it takes).
  """
  if imported_models.is_import_path(name):
    return imported_models.create(name, num_classes, **kwargs)
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; accepted: '
                     f'{", ".join(MODELS)}, or an import path '
                     f'{imported_models.FORMS}')
  accepted = model_options(name)
  for key, value in kwargs.items():
    if key not in accepted:
      raise ValueError(f'model {name} takes no option {key!r}; accepted: '
                       f'{", ".join(sorted(accepted))}')
    _check_type(name, key, value)
    if key == 'dropout_rate' and not 0 <= value < 1:
      raise ValueError(f'dropout_rate must be in [0, 1), got {value!r}')
    if key == 'dtype':
      _dtype(value)
  return MODELS[name](num_classes=num_classes, **kwargs)


def _check_type(name: str, key: str, value):
  """ValueError unless `value` has the type of the option's default (an
  int also does for a float): a value typed on the command line for a key
  the config does not set arrives as text or a literal."""
  constructor = MODELS[name]
  cls = getattr(constructor, 'func', constructor)
  default = cls.__dataclass_fields__[key].default
  kinds = {bool: ((bool,), 'true or false'), int: ((int, float), 'a number'),
           float: ((int, float), 'a number'), str: ((str,), 'a string'),
           tuple: ((tuple, list), 'a sequence, e.g. 16,32,64')
           }.get(type(default))
  if kinds and (not isinstance(value, kinds[0]) or (
      isinstance(value, bool) and bool not in kinds[0])):
    raise ValueError(f'bad value {value!r} for model_kwargs.{key} of model '
                     f'{name}; accepted: {kinds[1]}')


def init_keys(key) -> dict:
  """The RNG streams of model.init: `params` draws the weights; `dropout`
  is there for NNX modules, which take their Dropout's stream when built
  (nothing draws from it at init, train=False)."""
  return {'params': key, 'dropout': jax.random.fold_in(key, 1)}


def parameter_path(key_path) -> str:
  """A parameter's path from its pytree key path, as freeze and
  lr_multipliers match it: 'BasicBlock_0/Conv_0/kernel'."""
  return '/'.join(str(getattr(k, 'key', k)) for k in key_path)


def parameter_paths(model: nn.Module, image_shape=(32, 32, 3)) -> list[str]:
  """The paths of the model's parameters ('layer1_0/conv1/kernel'), from
  its abstract initialisation (no compile); the names do not depend on the
  image size."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          init_keys(jax.random.PRNGKey(0)),
                          jnp.ones((1, *image_shape)))
  return [parameter_path(path) for path, _ in
          jax.tree_util.tree_flatten_with_path(shapes['params'])[0]]


def model_options(name: str) -> set[str]:
  """The keyword options model `name` takes from config.model_kwargs."""
  if imported_models.is_import_path(name):
    return imported_models.options(name)
  constructor = MODELS[name]
  cls = getattr(constructor, 'func', constructor)
  fixed = set(getattr(constructor, 'keywords', {}))
  return {f.name for f in cls.__dataclass_fields__.values()
          if f.init and f.name not in ('parent', 'name', 'num_classes')
          } - fixed
