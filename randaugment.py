"""RandAugment (Cubuk et al., 2020) on the device, in timm's op set.

Each image gets `num_ops` ops drawn uniformly from OPS, each applied with
probability `prob` at one magnitude (0-10, timm's scale; the sign of a
signed op is drawn per image). Images are float (H, W, C) in [0, 1]. The
colour op needs three channels and leaves grayscale images as they are;
every other op works per channel. Geometric ops fill with black.

dm-pix supplies the ops it has (rotation, affine warps, solarize,
saturation, contrast); autocontrast, equalize, posterize, brightness and
sharpness, which it lacks, are written here, each a few lines of jnp.
"""

import functools

import dm_pix
import jax
import jax.numpy as jnp

# timm's ranges at magnitude 10: rotate 30 degrees, shear 0.3, translate
# 0.45 of the side, enhancement factors 1 +- 0.9, solarize threshold 0.
MAX_ROTATE_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.45
MAX_ENHANCE = 0.9
MAX_MAGNITUDE = 10.0


def _autocontrast(image, level, sign):
  del level, sign
  low = image.min(axis=(0, 1), keepdims=True)
  high = image.max(axis=(0, 1), keepdims=True)
  spread = high - low
  return jnp.where(spread > 0, (image - low) / jnp.where(spread > 0, spread,
                                                         1.0), image)


def _equalize_channel(channel):
  """PIL's ImageOps.equalize on one channel of 256 levels."""
  levels = jnp.round(channel * 255).astype(jnp.int32).reshape(-1)
  histogram = jnp.zeros(256, jnp.int32).at[levels].add(1)
  last = histogram[255 - jnp.argmax(histogram[::-1] > 0)]
  step = (levels.size - last) // 255
  below = jnp.cumsum(histogram) - histogram
  table = jnp.clip((below + step // 2) // jnp.maximum(step, 1), 0, 255)
  equalized = table[levels].reshape(channel.shape) / 255.0
  return jnp.where(step > 0, equalized, channel)


def _equalize(image, level, sign):
  del level, sign
  return jnp.moveaxis(jax.vmap(_equalize_channel, in_axes=-1)(image), 0, -1)


def _rotate(image, level, sign):
  angle = sign * level * jnp.deg2rad(MAX_ROTATE_DEGREES)
  return dm_pix.rotate(image, angle, mode='constant', cval=0.0)


def _solarize(image, level, sign):
  del sign
  return dm_pix.solarize(image, 1.0 - level)


def _colour(image, level, sign):
  if image.shape[-1] != 3:
    return image
  return dm_pix.adjust_saturation(image, 1.0 + sign * level * MAX_ENHANCE)


def _posterize(image, level, sign):
  """Keeps 8 - round(4 * level) bits (4 to 8) of each value's 8."""
  del sign
  drop = jnp.round(4 * level).astype(jnp.int32)
  levels = jnp.floor(image * 255).astype(jnp.int32)
  return ((levels >> drop) << drop).astype(image.dtype) / 255.0


def _contrast(image, level, sign):
  return dm_pix.adjust_contrast(image, 1.0 + sign * level * MAX_ENHANCE)


def _brightness(image, level, sign):
  return image * (1.0 + sign * level * MAX_ENHANCE)


def _sharpness(image, level, sign):
  """PIL's ImageEnhance.Sharpness: a blend with the image smoothed by the
  kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, borders unsmoothed."""
  height, width, _ = image.shape
  padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), mode='edge')
  total = sum(padded[dy:dy + height, dx:dx + width]
              for dy in range(3) for dx in range(3))
  smooth = (total + 4 * image) / 13.0
  inner = jnp.zeros((height, width, 1), bool).at[1:-1, 1:-1].set(True)
  smooth = jnp.where(inner, smooth, image)
  return smooth + (1.0 + sign * level * MAX_ENHANCE) * (image - smooth)


def _affine(image, matrix, offset):
  return dm_pix.affine_transform(image, matrix, offset=offset,
                                 mode='constant', cval=0.0)


def _shear(axis, image, level, sign):
  # Output pixel (y, x) reads input (y, x + s * y) (shear_x) or
  # (y + s * x, x) (shear_y): dm-pix takes that output-to-input map.
  shear = sign * level * MAX_SHEAR
  matrix = jnp.eye(3).at[(1, 0) if axis == 'x' else (0, 1)].set(shear)
  return _affine(image, matrix, 0.0)


def _translate(axis, image, level, sign):
  pixels = sign * level * MAX_TRANSLATE * image.shape[1 if axis == 'x' else 0]
  offset = jnp.zeros(3).at[1 if axis == 'x' else 0].set(pixels)
  return _affine(image, jnp.eye(3), offset)


# timm's RandAugment op set (its _RAND_TRANSFORMS), in that order.
OPS = {
    'autocontrast': _autocontrast,
    'equalize': _equalize,
    'rotate': _rotate,
    'solarize': _solarize,
    'colour': _colour,
    'posterize': _posterize,
    'contrast': _contrast,
    'brightness': _brightness,
    'sharpness': _sharpness,
    'shear_x': functools.partial(_shear, 'x'),
    'shear_y': functools.partial(_shear, 'y'),
    'translate_x': functools.partial(_translate, 'x'),
    'translate_y': functools.partial(_translate, 'y'),
}


def apply_op(name: str, image, magnitude: float, sign: float = 1.0):
  """One op on one image at `magnitude` (0-10), clipped to [0, 1]."""
  return jnp.clip(OPS[name](image, magnitude / MAX_MAGNITUDE, sign), 0, 1)


def randaugment(images, key, num_ops: int = 2, magnitude: float = 9.0,
                prob: float = 0.5):
  """RandAugment on a batch (N, H, W, C) of floats in [0, 1]."""
  branches = [functools.partial(apply_op, name) for name in OPS]
  n = images.shape[0]

  def one_op(image, op, apply, sign):
    out = jax.lax.switch(op, [lambda x, f=f: f(x, magnitude, sign)
                              for f in branches], image)
    return jnp.where(apply, out, image)

  for op_key in jax.random.split(key, num_ops):
    op_key, apply_key, sign_key = jax.random.split(op_key, 3)
    ops = jax.random.randint(op_key, (n,), 0, len(OPS))
    apply = jax.random.bernoulli(apply_key, prob, (n,))
    signs = jnp.where(jax.random.bernoulli(sign_key, 0.5, (n,)), 1.0, -1.0)
    images = jax.vmap(one_op)(images, ops, apply, signs)
  return images
