"""ConvNeXt (Liu et al., 2022) in timm's layout.

Modules and parameters carry the names of timm's `convnext.py`, with timm's
`.N` of a sequence written `_N` (our `stages_1/blocks_0/conv_dw` is timm's
`stages.1.blocks.0.conv_dw`), so that pretrained.py maps timm's weights by
rule and the logits agree (tests/convnext_test.py). Registered in
models.MODELS as convnext_atto and convnext_tiny.

timm's small variants (convnext_atto, ...) set conv_mlp=True: the MLP as
1x1 convolutions and a channels-first LayerNorm. That computes what the
Dense layers and channels-last LayerNorm here compute; only the stored
shape of fc1/fc2 differs (out, in, 1, 1), which pretrained.py accepts.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

import layers

STEM_STRIDES = (1, 2, 4)


class Block(nn.Module):
  """x + drop_path(gamma * mlp(norm(conv_dw(x)))), timm's ConvNeXtBlock."""
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    channels = x.shape[-1]
    y = nn.Conv(channels, (7, 7), padding=3, feature_group_count=channels,
                dtype=self.dtype, kernel_init=layers.TIMM_INIT,
                name='conv_dw')(x)
    y = layers.layer_norm('norm', self.dtype)(y)
    y = layers.Mlp(4 * channels, self.dtype, name='mlp')(y)
    # Layer scale: the branch starts near 0, so each block starts near
    # the identity.
    gamma = self.param('gamma', nn.initializers.constant(1e-6), (channels,))
    y = layers.DropPath(self.drop_path_rate)(
        y * gamma.astype(y.dtype), deterministic=not train)
    return x + y


class Head(nn.Module):
  """timm's NormMlpClassifierHead without hidden layer: norm, dropout, fc
  (after the global average pool)."""
  num_classes: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = layers.layer_norm('norm', self.dtype)(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype,
                    kernel_init=layers.TIMM_INIT, name='fc')(x)


class Stage(nn.Module):
  """timm's ConvNeXtStage: downsample_0/1 (LayerNorm, 2x2 stride-2 conv)
  where the resolution halves, then blocks_0.. ."""
  dim: int
  downsample: bool
  drop_path_rates: Sequence[float]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.downsample:
      x = layers.layer_norm('downsample_0', self.dtype)(x)
      x = nn.Conv(self.dim, (2, 2), (2, 2), padding='VALID', dtype=self.dtype,
                  kernel_init=layers.TIMM_INIT, name='downsample_1')(x)
    for j, rate in enumerate(self.drop_path_rates):
      x = Block(rate, self.dtype, name=f'blocks_{j}')(x, train)
    return x


class ConvNeXt(nn.Module):
  """A ConvNeXt classifier: a patchify stem, four stages of ConvNeXt blocks
  (each after the first halving the resolution with a LayerNorm and a 2x2
  stride-2 convolution), global average pool, head.

  Attributes:
    depths: blocks per stage.
    dims: channels per stage.
    num_classes: output classes.
    stem_stride: 4 (timm's stem: a 4x4 stride-4 convolution, for 224 px),
      or 2 or 1 for 28-32 px images. The kernel stays 4x4, padded so that
      the stem's output is the image size / stem_stride, so timm's stem
      weights still load.
    dropout_rate: dropout before the head's fc.
    drop_path_rate: stochastic depth of the residual branches, rising
      linearly over all blocks from 0 to this rate (timm's rule).
    dtype: compute precision, 'float32' or 'bfloat16'; parameters stay
      float32.
  """
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  num_classes: int = 1000
  stem_stride: int = 4
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: str = 'float32'

  def __post_init__(self):
    # Refused when built, by name, before any training (as models.ResNet).
    if self.stem_stride not in STEM_STRIDES:
      raise ValueError(f'stem_stride must be one of '
                       f'{", ".join(map(str, STEM_STRIDES))}, got '
                       f'{self.stem_stride!r}')
    if len(self.depths) != len(self.dims):
      raise ValueError(f'depths {tuple(self.depths)} and dims '
                       f'{tuple(self.dims)} must have one entry per stage')
    layers.check_drop_path_rate(self.drop_path_rate)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = layers.compute_dtype(self.dtype)
    s = self.stem_stride
    # Stride 4 is timm's unpadded patchify; 'SAME' pads the 4x4 kernel of a
    # smaller stride so that the output is the input size / s.
    x = nn.Conv(self.dims[0], (4, 4), (s, s),
                padding='VALID' if s == 4 else 'SAME', dtype=dtype,
                kernel_init=layers.TIMM_INIT, name='stem_0')(x.astype(dtype))
    x = layers.layer_norm('stem_1', dtype)(x)
    rates = iter(layers.drop_path_rates(self.drop_path_rate,
                                        sum(self.depths)))
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      x = Stage(dim, downsample=i > 0, drop_path_rates=tuple(
          next(rates) for _ in range(depth)), dtype=dtype,
                name=f'stages_{i}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return Head(self.num_classes, self.dropout_rate, dtype, name='head')(
        x, train)

