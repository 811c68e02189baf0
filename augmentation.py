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

# Pixels of zero padding around each side before a random crop.
CROP_PADDING = 4


def to_float(images: jax.Array) -> jax.Array:
  """uint8 images -> float32 in [0, 1]; float images pass through."""
  if images.dtype != jnp.uint8:
    return images
  return jnp.asarray(_UINT8_TO_FLOAT)[images]


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
