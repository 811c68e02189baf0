"""On-device image preparation inside the jitted steps: uint8 to float, and
training augmentation drawn from the step's RNG.

Images travel from the host as uint8 (4x less host memory and transfer than
float32) and become float32 in [0, 1] here. Augmentation is a pure function
of (images, key) with key = fold_in(rng, step), so a resumed step sees the
same augmented batch and no host work is added.
"""

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


# Every accepted `config.augment`: name -> (float images, key) -> images.
AUGMENTATIONS = {
    'none': lambda images, key: images,
    'crop': _random_crop,      # Pad by CROP_PADDING, crop back at random.
    'crop_flip': _crop_flip,   # And mirror half the images left-right.
}


def augment(images: jax.Array, key: jax.Array, kind: str) -> jax.Array:
  """Applies AUGMENTATIONS[kind]; the same (images, key) give the same
  result on any number of devices (the draws cover the global batch)."""
  return AUGMENTATIONS[kind](images, key)
