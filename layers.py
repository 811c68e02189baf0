"""Building blocks the models share: compute dtypes, stochastic depth, and
timm's LayerNorm, init and MLP.

models.py's ResNets, vit.py and convnext.py all use them. They live in
this leaf module rather than in models.py because models.py imports vit.py
and convnext.py to register them in MODELS: importing models.py back from
those would be an import cycle (tests/layout_test.py).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# config.model_kwargs.dtype -> the compute dtype; parameters stay float32.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# timm's LayerNorm and LayerNorm2d epsilon, that of its pretrained weights.
TIMM_LN_EPS = 1e-6
# timm's init of its ViTs and ConvNeXts: N(0, 0.02) kernels, zero biases.
TIMM_INIT = nn.initializers.truncated_normal(0.02)


def compute_dtype(name: str):
  """The dtype named `name`; ValueError naming those accepted."""
  if name not in DTYPES:
    raise ValueError(f'unknown dtype {name!r}; accepted: '
                     f'{", ".join(DTYPES)}')
  return DTYPES[name]


def check_drop_path_rate(rate) -> None:
  """ValueError unless `rate` is a stochastic depth rate in [0, 1)."""
  if not (isinstance(rate, (int, float)) and 0 <= rate < 1):
    raise ValueError(f'drop_path_rate must be in [0, 1), got {rate!r}')


def drop_path_rates(rate: float, blocks: int) -> list[float]:
  """Each block's stochastic depth rate: rising linearly from 0 at the first
  block to `rate` at the last, as timm's calculate_drop_path_rates."""
  return [rate * i / max(blocks - 1, 1) for i in range(blocks)]


class DropPath(nn.Module):
  """Stochastic depth (Huang et al., 2016) on a residual branch, as timm's
  DropPath: in training, each sample's branch is zeroed with probability
  `rate` and kept ones are scaled by 1 / (1 - rate); the identity otherwise.

  The mask comes from the 'dropout' RNG stream.
  """
  rate: float = 0.0

  def __call__(self, x, deterministic: bool = True):
    # Nothing is drawn at rate 0 or in eval, so that such a model is bitwise
    # the one without stochastic depth and needs no 'dropout' RNG.
    if deterministic or self.rate == 0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep,
                                (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros((), x.dtype))


def layer_norm(name: str, dtype) -> nn.LayerNorm:
  """timm's LayerNorm (over the last axis, channels in NHWC)."""
  return nn.LayerNorm(epsilon=TIMM_LN_EPS, dtype=dtype, name=name)


class Mlp(nn.Module):
  """timm's Mlp: fc1, exact (erf) GELU, fc2 back to the input width."""
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=TIMM_INIT,
                 name='fc1')(x)
    # PyTorch's nn.GELU is the erf form; the tanh one is off by ~1e-3.
    x = nn.gelu(x, approximate=False)
    return nn.Dense(width, dtype=self.dtype, kernel_init=TIMM_INIT,
                    name='fc2')(x)
