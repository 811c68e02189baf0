"""RandAugment (Cubuk et al., 2020) on the device, in timm's op set.

Each image gets `num_ops` ops drawn uniformly from OPS, each applied with
probability `prob` at one magnitude (0-10, timm's scale; the sign of a
signed op is drawn per image). Images are float (H, W, C) in [0, 1]. The
colour op needs three channels and leaves grayscale images as they are;
every other op works per channel. Geometric ops fill with black.

dm-pix supplies the ops it has (solarize, saturation, contrast);
autocontrast, equalize, posterize, brightness and sharpness, which it
lacks, are written here, each a few lines of jnp. The five geometric ops
are written as the maps of dm-pix's affine warp (rotation as dm_pix.rotate
builds it), so that a batch warps each image once; the warp itself is a
2-D one that gives dm-pix's result faster on CPU (_affine).
"""

import functools

import dm_pix
import jax
import jax.numpy as jnp
from jax.scipy import ndimage

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
  """dm_pix.affine_transform(image, matrix, offset=offset, order=1,
  mode='constant', cval=0) for a map that leaves the channel axis alone
  (every map of WARPS): bilinear, and black where the source point falls
  outside the image.

  dm-pix interpolates over all three axes, eight corners per value, which
  on XLA's CPU backend made one warp of a 128-image batch cost about ten
  times this per-channel 2-D interpolation (jax.scipy's map_coordinates)
  and most of RandAugment's time (bench/benchmark.py --mode=augment_cost).
  """
  height, width, _ = image.shape
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32),
                            indexing='ij')
  y = matrix[0, 0] * rows + matrix[0, 1] * cols + offset[0]
  x = matrix[1, 0] * rows + matrix[1, 1] * cols + offset[1]
  inside = (y >= 0) & (y <= height - 1) & (x >= 0) & (x <= width - 1)
  # 'nearest' only clamps the upper corner of a point on the last row or
  # column, whose weight is 0; points outside are zeroed below.
  sample = functools.partial(ndimage.map_coordinates,
                             coordinates=[y, x], order=1, mode='nearest')
  warped = jax.vmap(sample, in_axes=-1, out_axes=-1)(image)
  return jnp.where(inside[..., None], warped, 0.0)


# The geometric ops as dm-pix's output-to-input maps (matrix, offset) of an
# image of `shape`, so that a batch warps each image once whichever of them
# it drew.
def _rotation(shape, level, sign):
  # dm_pix.rotate's map, about the image's centre.
  angle = sign * level * jnp.deg2rad(MAX_ROTATE_DEGREES)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  matrix = jnp.array([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]])
  centre = (jnp.asarray(shape) - 1.) / 2.
  return matrix, centre - matrix @ centre


def _shear(axis, shape, level, sign):
  # Output pixel (y, x) reads input (y, x + s * y) (shear_x) or
  # (y + s * x, x) (shear_y).
  del shape
  shear = sign * level * MAX_SHEAR
  matrix = jnp.eye(3).at[(1, 0) if axis == 'x' else (0, 1)].set(shear)
  return matrix, jnp.zeros(3)


def _translate(axis, shape, level, sign):
  pixels = sign * level * MAX_TRANSLATE * shape[1 if axis == 'x' else 0]
  return jnp.eye(3), jnp.zeros(3).at[1 if axis == 'x' else 0].set(pixels)


WARPS = {
    'rotate': _rotation,
    'shear_x': functools.partial(_shear, 'x'),
    'shear_y': functools.partial(_shear, 'y'),
    'translate_x': functools.partial(_translate, 'x'),
    'translate_y': functools.partial(_translate, 'y'),
}


def _warp(name, image, level, sign):
  return _affine(image, *WARPS[name](image.shape, level, sign))


# timm's RandAugment op set (its _RAND_TRANSFORMS), in that order.
OPS = {
    'autocontrast': _autocontrast,
    'equalize': _equalize,
    'rotate': functools.partial(_warp, 'rotate'),
    'solarize': _solarize,
    'colour': _colour,
    'posterize': _posterize,
    'contrast': _contrast,
    'brightness': _brightness,
    'sharpness': _sharpness,
    'shear_x': functools.partial(_warp, 'shear_x'),
    'shear_y': functools.partial(_warp, 'shear_y'),
    'translate_x': functools.partial(_warp, 'translate_x'),
    'translate_y': functools.partial(_warp, 'translate_y'),
}
_PIXEL_OPS = [name for name in OPS if name not in WARPS]


def apply_op(name: str, image, magnitude: float, sign: float = 1.0):
  """One op on one image at `magnitude` (0-10), clipped to [0, 1]."""
  return jnp.clip(OPS[name](image, magnitude / MAX_MAGNITUDE, sign), 0, 1)


def _one_op(image, op, apply, sign, level):
  """apply_op(OPS[op]) where `apply`, for one image of a vmapped batch.

  Under vmap every branch of a switch runs for every image. So the image
  is warped once, by its op's map (the identity for the other ops), and the
  switch holds only the per-pixel ops: two warps per image for two ops,
  where a switch over all 13 would make ten.
  """
  names = list(OPS)
  warp_of_op = jnp.asarray([list(WARPS).index(name) + 1 if name in WARPS
                            else 0 for name in names])
  pixel_of_op = jnp.asarray([_PIXEL_OPS.index(name) if name in _PIXEL_OPS
                             else 0 for name in names])

  def identity():
    return jnp.eye(3), jnp.zeros(3)

  matrix, offset = jax.lax.switch(
      warp_of_op[op], [identity] + [
          functools.partial(f, image.shape, level, sign)
          for f in WARPS.values()])
  warped = _affine(image, matrix, offset)
  pixels = jax.lax.switch(pixel_of_op[op], [
      functools.partial(OPS[name], level=level, sign=sign)
      for name in _PIXEL_OPS], image)
  out = jnp.clip(jnp.where(warp_of_op[op] > 0, warped, pixels), 0, 1)
  return jnp.where(apply, out, image)


def randaugment(images, key, num_ops: int = 2, magnitude: float = 9.0,
                prob: float = 0.5):
  """RandAugment on a batch (N, H, W, C) of floats in [0, 1]."""
  n = images.shape[0]
  one_op = functools.partial(_one_op, level=magnitude / MAX_MAGNITUDE)
  for op_key in jax.random.split(key, num_ops):
    op_key, apply_key, sign_key = jax.random.split(op_key, 3)
    ops = jax.random.randint(op_key, (n,), 0, len(OPS))
    apply = jax.random.bernoulli(apply_key, prob, (n,))
    signs = jnp.where(jax.random.bernoulli(sign_key, 0.5, (n,)), 1.0, -1.0)
    images = jax.vmap(one_op)(images, ops, apply, signs)
  return images
