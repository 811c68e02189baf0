"""The Vision Transformer (Dosovitskiy et al., 2021) in timm's layout.

Modules and parameters carry the names of timm's `vision_transformer.py`,
with timm's `.N` of a sequence written `_N` (our `blocks_3/attn/qkv` is
timm's `blocks.3.attn.qkv`), and compute what timm's modules compute, so
that pretrained.py maps timm's weights by rule and the logits agree
(tests/vit_test.py). Registered in models.MODELS as vit_tiny, vit_small and
vit_base.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import layers

POOLS = ('token', 'avg')


class Attention(nn.Module):
  """timm's Attention: one qkv projection, scaled dot-product, proj."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, tokens, width = x.shape
    head_dim = width // self.num_heads
    qkv = nn.Dense(3 * width, dtype=self.dtype, kernel_init=layers.TIMM_INIT,
                   name='qkv')(x)
    # timm's order of the 3*D outputs, so that its qkv weight loads as is:
    # (q/k/v, head, channel of the head).
    q, k, v = jnp.moveaxis(
        qkv.reshape(batch, tokens, 3, self.num_heads, head_dim), 2, 0)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q * head_dim ** -0.5, k)
    # The softmax in float32 whatever the compute dtype.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    x = jnp.einsum('bhqk,bkhd->bqhd', weights.astype(v.dtype), v)
    return nn.Dense(width, dtype=self.dtype, kernel_init=layers.TIMM_INIT,
                    name='proj')(x.reshape(batch, tokens, width))


class Block(nn.Module):
  """A pre-norm transformer block: x + attn(norm1(x)), x + mlp(norm2(x)),
  each branch under its own stochastic depth."""
  num_heads: int
  mlp_ratio: float
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    # One module, called twice: each call draws its own mask.
    drop_path = layers.DropPath(self.drop_path_rate)
    y = Attention(self.num_heads, self.dtype, name='attn')(
        layers.layer_norm('norm1', self.dtype)(x))
    x = x + drop_path(y, deterministic=not train)
    y = layers.Mlp(int(x.shape[-1] * self.mlp_ratio), self.dtype,
                   name='mlp')(layers.layer_norm('norm2', self.dtype)(x))
    return x + drop_path(y, deterministic=not train)


class PatchEmbed(nn.Module):
  """timm's PatchEmbed: a patch x patch convolution of stride patch (`proj`),
  its grid flattened row by row into tokens."""
  embed_dim: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), (p, p), padding='VALID',
                dtype=self.dtype, name='proj')(x)
    return x.reshape(x.shape[0], -1, self.embed_dim)


class VisionTransformer(nn.Module):
  """A ViT classifier: patches, a class token and learned position
  embeddings, `depth` pre-norm blocks, a final LayerNorm and a Dense head.

  The position embeddings have one entry per patch of the image size the
  model is initialised at, plus the class token's; pretrained.py resamples
  other grids.

  Attributes:
    num_classes: output classes.
    embed_dim: width of the tokens.
    depth: transformer blocks.
    num_heads: attention heads (embed_dim must be a multiple).
    mlp_ratio: hidden width of each block's MLP, in embed_dims.
    patch_size: pixels a side of a patch; it must divide the image's height
      and width. 16 as timm's *_patch16_224 weights (a 14x14 grid at 224
      px). For 28-32 px images use 4 (a 7x7 or 8x8 grid): 16 would leave a
      2x2 grid, four tokens.
    pool: 'token' (the class token after the final `norm`, timm's default)
      or 'avg' (the mean of the patch tokens, then `fc_norm` in place of
      `norm`, timm's global_pool='avg').
    dropout_rate: dropout before the head.
    drop_path_rate: stochastic depth of the residual branches, rising
      linearly over the blocks from 0 to this rate (timm's rule).
    dtype: compute precision, 'float32' or 'bfloat16'; parameters stay
      float32.
  """
  num_classes: int = 1000
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  patch_size: int = 16
  pool: str = 'token'
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: str = 'float32'

  def __post_init__(self):
    # Refused when built, by name, before any training (as models.ResNet).
    if self.pool not in POOLS:
      raise ValueError(f'unknown pool {self.pool!r}; accepted: '
                       f'{", ".join(POOLS)}')
    if not (isinstance(self.patch_size, int) and self.patch_size > 0):
      raise ValueError(f'patch_size must be a positive integer, got '
                       f'{self.patch_size!r}')
    if self.embed_dim % self.num_heads:
      raise ValueError(f'embed_dim {self.embed_dim} is not a multiple of '
                       f'num_heads {self.num_heads}')
    layers.check_drop_path_rate(self.drop_path_rate)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = layers.compute_dtype(self.dtype)
    height, width = x.shape[1:3]
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f'patch_size {self.patch_size} does not divide the '
                       f'image size {height}x{width}; use a patch size that '
                       f'divides both sides (4 for 28 or 32 px images)')
    x = PatchEmbed(self.embed_dim, self.patch_size, dtype,
                   name='patch_embed')(x.astype(dtype))
    # timm's init: the class token N(0, 1e-6), the positions N(0, 0.02).
    cls_token = self.param('cls_token', nn.initializers.normal(1e-6),
                           (1, 1, self.embed_dim))
    pos_embed = self.param('pos_embed', nn.initializers.normal(0.02),
                           (1, 1 + x.shape[1], self.embed_dim))
    x = jnp.concatenate([jnp.broadcast_to(
        cls_token.astype(dtype), (x.shape[0], 1, self.embed_dim)), x], axis=1)
    x = x + pos_embed.astype(dtype)
    rates = layers.drop_path_rates(self.drop_path_rate, self.depth)
    for i, rate in enumerate(rates):
      x = Block(self.num_heads, self.mlp_ratio, rate, dtype,
                name=f'blocks_{i}')(x, train)
    if self.pool == 'token':
      x = layers.layer_norm('norm', dtype)(x)[:, 0]
    else:
      x = layers.layer_norm('fc_norm', dtype)(jnp.mean(x[:, 1:], axis=1))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=dtype,
                    kernel_init=layers.TIMM_INIT, name='head')(x)
