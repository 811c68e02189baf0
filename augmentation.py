"""On-device image preparation inside the jitted steps: uint8 to float, and
training augmentation drawn from the step's RNG.

Images travel from the host as uint8 (4x less host memory and transfer than
float32) and become float32 in [0, 1] here. Augmentation is a pure function
of (images, key) with key = fold_in(rng, step), so a resumed step sees the
same augmented batch and no host work is added.
"""

import inspect
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

# uint8 -> float32 as a 256-entry table: the same numbers as dividing by 255
# on the host (XLA turns a division by a constant into a multiplication by
# its reciprocal, which rounds differently for some values).
_UINT8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255.0)

# Named per-channel (mean, std) of pixels in [0, 1] for config.normalize;
# imagenet is torchvision's, which its and most timm weights expect.
NORMALIZATIONS = {'none': None,
                  'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}

# Pixels of zero padding around each side before a random crop.
CROP_PADDING = 4


def to_float(images: jax.Array) -> jax.Array:
  """uint8 images -> float32 in [0, 1]; float images pass through."""
  if images.dtype != jnp.uint8:
    return images
  return jnp.asarray(_UINT8_TO_FLOAT)[images]


def parse_normalize(text: str, channels: int = 0):
  """config.normalize -> (mean, std) tuples of `channels` values, or None.

  'none', a name of NORMALIZATIONS, or 'M1,M2,M3/S1,S2,S3' (one value each
  for all channels, or one per channel). Three values for a grayscale
  image become their averages. channels 0: not checked against images yet.
  Raises ValueError naming the text and what is accepted.
  """
  accepted = (f'accepted: {", ".join(NORMALIZATIONS)}, or MEAN/STD with one '
              f'value or one per channel each, e.g. 0.5/0.25 or '
              f'0.485,0.456,0.406/0.229,0.224,0.225')
  if text in NORMALIZATIONS:
    values = NORMALIZATIONS[text]
  else:
    mean, sep, std = text.partition('/')
    try:
      values = tuple(tuple(float(v) for v in part.split(','))
                     for part in (mean, std))
    except ValueError:
      values = None
    if not sep or values is None or len(values[0]) != len(values[1]) or (
        len(values[0]) not in (1, 3)) or not all(
            s > 0 and s < float('inf') for s in values[1]) or not all(
                abs(m) < float('inf') for m in values[0]):
      raise ValueError(f'normalize {text!r} is not usable; {accepted}')
  if values is None:
    return None
  mean, std = values
  if channels and len(mean) not in (1, channels):
    if channels != 1:
      raise ValueError(f'normalize {text!r} gives {len(mean)} values for '
                       f'{channels}-channel images; {accepted}')
    mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
  if channels and len(mean) == 1:
    mean, std = mean * channels, std * channels
  return tuple(mean), tuple(std)


def normalized_apply(apply_fn, mean, std):
  """`apply_fn` (a Flax model's apply) on (images - mean) / std: the
  normalization every train, eval and predict step then shares."""
  mean = np.asarray(mean, np.float32)
  scale = np.float32(1.0) / np.asarray(std, np.float32)

  def apply(variables, images, *args, **kwargs):
    return apply_fn(variables, (images - mean) * scale, *args, **kwargs)

  return apply


def _random_crop(images, key):
  # A padded copy and one dynamic slice per image; dm-pix has the same as a
  # per-image function, not worth a dependency for these lines.
  n, height, width, channels = images.shape
  p = CROP_PADDING
  padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
  corners = jax.random.randint(key, (n, 2), 0, 2 * p + 1)
  return jax.vmap(lambda image, corner: jax.lax.dynamic_slice(
      image, (corner[0], corner[1], 0), (height, width, channels)))(
          padded, corners)


def _random_flip(images, key):
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def _crop_flip(images, key):
  crop_key, flip_key = jax.random.split(key)
  return _random_flip(_random_crop(images, crop_key), flip_key)


def _random_resized_crop_flip(images, key, scale=(0.08, 1.0),
                              ratio=(3 / 4, 4 / 3)):
  """A random box of each image resized back to the image's size, then a
  random mirror: the crop of Inception training and timm's
  RandomResizedCrop. The box covers a share of the area drawn uniformly
  from `scale`, with a width:height drawn log-uniformly from `ratio`;
  where it would not fit it is clipped to the image (timm retries ten
  draws first; clipping keeps one draw per image, so the same key gives
  the same boxes on any device count). Bilinear, antialiased resizing
  (jax.image.scale_and_translate), on the device.
  """
  n, height, width, _ = images.shape
  area_key, ratio_key, x_key, y_key, flip_key = jax.random.split(key, 5)
  area = jax.random.uniform(area_key, (n,), minval=scale[0], maxval=scale[1])
  log_ratio = jax.random.uniform(ratio_key, (n,), minval=np.log(ratio[0]),
                                 maxval=np.log(ratio[1]))
  box_w = jnp.clip(jnp.sqrt(area * jnp.exp(log_ratio)) * width, 1, width)
  box_h = jnp.clip(jnp.sqrt(area / jnp.exp(log_ratio)) * height, 1, height)
  x0 = jax.random.uniform(x_key, (n,)) * (width - box_w)
  y0 = jax.random.uniform(y_key, (n,)) * (height - box_h)

  def crop(image, x, y, w, h):
    factors = jnp.stack([height / h, width / w])
    return jax.image.scale_and_translate(
        image, image.shape, (0, 1), factors,
        -jnp.stack([y, x]) * factors, method='linear', antialias=True)

  return _random_flip(jax.vmap(crop)(images, x0, y0, box_w, box_h), flip_key)


# Every accepted `config.augment`: name -> (float images, key, **options of
# config.augment_kwargs) -> images.
AUGMENTATIONS = {
    'none': lambda images, key: images,
    'crop': _random_crop,      # Pad by CROP_PADDING, crop back at random.
    'crop_flip': _crop_flip,   # And mirror half the images left-right.
    'rrc': _random_resized_crop_flip,  # A random box resized; and mirror.
}


def augment_options(kind: str) -> set[str]:
  """The augment_kwargs keys augmentation `kind` takes."""
  parameters = inspect.signature(AUGMENTATIONS[kind]).parameters
  return set(list(parameters)[2:])


def check_options(kind: str, options: dict):
  """ValueError naming a key of augment_kwargs `kind` does not take, or a
  range that is not (low, high) with 0 < low <= high."""
  accepted = augment_options(kind)
  for key, value in options.items():
    if key not in accepted:
      names = ', '.join(f'augment_kwargs.{k}' for k in sorted(accepted))
      raise ValueError(f"unknown config key 'augment_kwargs.{key}' for "
                       f"augment {kind}; accepted: {names or 'none'}")
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, float)) for v in value) and
            0 < value[0] <= value[1] < float('inf')) or (
                key == 'scale' and value[1] > 1):
      raise ValueError(f'augment_kwargs.{key} must be LOW,HIGH with 0 < LOW '
                       f'<= HIGH{" <= 1" if key == "scale" else ""}, got '
                       f'{value!r}')


def augment(images: jax.Array, key: jax.Array, kind: str,
            options: Optional[dict] = None) -> jax.Array:
  """Applies AUGMENTATIONS[kind] with `options` (config.augment_kwargs);
  the same (images, key) give the same result on any number of devices
  (the draws cover the global batch)."""
  return AUGMENTATIONS[kind](images, key, **(options or {}))
