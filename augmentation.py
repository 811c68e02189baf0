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

import randaugment

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
                              ratio=(3 / 4, 4 / 3), *, size=None):
  """A random box of each image resized back to the image's size, then a
  random mirror: the crop of Inception training and timm's
  RandomResizedCrop. The box covers a share of the area drawn uniformly
  from `scale`, with a width:height drawn log-uniformly from `ratio`;
  where it would not fit it is clipped to the image (timm retries ten
  draws first; clipping keeps one draw per image, so the same key gives
  the same boxes on any device count). Bilinear, antialiased resizing
  (jax.image.scale_and_translate), on the device, to `size` ((height,
  width); default: the images' own), for images kept larger than the
  model's input (image_folder.FolderSplit.stored_size).
  """
  n, height, width, channels = images.shape
  out_height, out_width = size or (height, width)
  area_key, ratio_key, x_key, y_key, flip_key = jax.random.split(key, 5)
  area = jax.random.uniform(area_key, (n,), minval=scale[0], maxval=scale[1])
  log_ratio = jax.random.uniform(ratio_key, (n,), minval=np.log(ratio[0]),
                                 maxval=np.log(ratio[1]))
  box_w = jnp.clip(jnp.sqrt(area * jnp.exp(log_ratio)) * width, 1, width)
  box_h = jnp.clip(jnp.sqrt(area / jnp.exp(log_ratio)) * height, 1, height)
  x0 = jax.random.uniform(x_key, (n,)) * (width - box_w)
  y0 = jax.random.uniform(y_key, (n,)) * (height - box_h)

  def crop(image, x, y, w, h):
    factors = jnp.stack([out_height / h, out_width / w])
    return jax.image.scale_and_translate(
        image, (out_height, out_width, channels), (0, 1), factors,
        -jnp.stack([y, x]) * factors, method='linear', antialias=True)

  return _random_flip(jax.vmap(crop)(images, x0, y0, box_w, box_h), flip_key)


def _random_erasing(images, key, erasing_prob=0.25,
                    erasing_area=(0.02, 1 / 3), erasing_ratio=(0.3, 3.3)):
  """Random erasing (Zhong et al., 2020): with probability erasing_prob an
  image gets one box, of a share of its area drawn from erasing_area and a
  height:width drawn log-uniformly from erasing_ratio, clipped to the
  image, filled with uniform noise in [0, 1] (timm's per-pixel mode, before
  normalization here). One draw per image, as rrc."""
  n, height, width, _ = images.shape
  keys = jax.random.split(key, 6)
  erase = jax.random.bernoulli(keys[0], erasing_prob, (n, 1, 1, 1))
  area = jax.random.uniform(keys[1], (n,), minval=erasing_area[0],
                            maxval=erasing_area[1]) * height * width
  log_ratio = jax.random.uniform(keys[2], (n,),
                                 minval=np.log(erasing_ratio[0]),
                                 maxval=np.log(erasing_ratio[1]))
  box_h = jnp.clip(jnp.round(jnp.sqrt(area * jnp.exp(log_ratio))), 1, height)
  box_w = jnp.clip(jnp.round(jnp.sqrt(area / jnp.exp(log_ratio))), 1, width)
  top = jnp.floor(jax.random.uniform(keys[3], (n,)) * (height - box_h + 1))
  left = jnp.floor(jax.random.uniform(keys[4], (n,)) * (width - box_w + 1))
  inside = _box_mask(height, width, top, left, box_h, box_w)
  noise = jax.random.uniform(keys[5], images.shape, images.dtype)
  return jnp.where(erase & inside, noise, images)


def _box_mask(height, width, top, left, box_h, box_w):
  """(N, H, W, 1) True inside each image's box [top, top + box_h) x [left,
  left + box_w)."""
  rows = jnp.arange(height)[None, :, None, None]
  cols = jnp.arange(width)[None, None, :, None]
  return ((rows >= top[:, None, None, None]) &
          (rows < (top + box_h)[:, None, None, None]) &
          (cols >= left[:, None, None, None]) &
          (cols < (left + box_w)[:, None, None, None]))


def _randaugment(images, key, randaugment_ops=2, randaugment_magnitude=9.0,
                 randaugment_prob=0.5):
  return randaugment.randaugment(images, key, int(randaugment_ops),
                                 float(randaugment_magnitude),
                                 float(randaugment_prob))


def _mix(images, targets, key, kinds, mixup_alpha=0.8, cutmix_alpha=1.0,
         mix_switch_prob=0.5, mix_prob=1.0):
  """Mixup (Zhang et al., 2018) or CutMix (Yun et al., 2019) of the batch
  with its reverse, as timm's Mixup in batch mode: with probability
  mix_prob, one lambda ~ Beta(alpha, alpha) for the batch; with both kinds
  asked for, CutMix with probability mix_switch_prob, else mixup. CutMix
  pastes a box of side sqrt(1 - lambda) of the image (clipped at the
  border) and mixes the targets by the box's true area. Returns (images,
  soft targets)."""
  n, height, width, _ = images.shape
  keys = jax.random.split(key, 6)
  use_cutmix = (jax.random.bernoulli(keys[0], mix_switch_prob)
                if len(kinds) == 2 else jnp.array(kinds == ('cutmix',)))
  alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
  lam = jax.random.beta(keys[1], alpha, alpha)
  other_images, other_targets = images[::-1], targets[::-1]
  mixed = lam * images + (1 - lam) * other_images
  cut = jnp.sqrt(1 - lam)
  cut_h, cut_w = jnp.floor(height * cut), jnp.floor(width * cut)
  centre_y = jax.random.randint(keys[2], (), 0, height)
  centre_x = jax.random.randint(keys[3], (), 0, width)
  top = jnp.clip(centre_y - cut_h // 2, 0, height)
  bottom = jnp.clip(centre_y + cut_h // 2, 0, height)
  left = jnp.clip(centre_x - cut_w // 2, 0, width)
  right = jnp.clip(centre_x + cut_w // 2, 0, width)
  box = _box_mask(height, width, *(jnp.full((n,), v) for v in (
      top, left, bottom - top, right - left)))
  cut_lam = 1 - (bottom - top) * (right - left) / (height * width)
  images_out = jnp.where(use_cutmix, jnp.where(box, other_images, images),
                         mixed)
  lam = jnp.where(use_cutmix, cut_lam, lam)
  apply = jax.random.bernoulli(keys[4], mix_prob)
  lam = jnp.where(apply, lam, 1.0)
  return (jnp.where(apply, images_out, images),
          lam * targets + (1 - lam) * other_targets)


# Every accepted step of `config.augment`: name -> (float images, key,
# **its options of config.augment_kwargs) -> images. mixup and cutmix (MIX)
# also mix the labels.
AUGMENTATIONS = {
    'none': lambda images, key: images,
    'crop': _random_crop,      # Pad by CROP_PADDING, crop back at random.
    'crop_flip': _crop_flip,   # And mirror half the images left-right.
    'rrc': _random_resized_crop_flip,  # A random box resized; and mirror.
    'randaugment': _randaugment,
    'random_erasing': _random_erasing,
    'mixup': None,
    'cutmix': None,
}
MIX = ('mixup', 'cutmix')
# The options of mixup and cutmix (in _mix), by the steps that take them.
MIX_OPTIONS = {'mixup_alpha': ('mixup',), 'cutmix_alpha': ('cutmix',),
               'mix_switch_prob': ('mixup', 'cutmix'),
               'mix_prob': ('mixup', 'cutmix')}


def parse_augment(text: str) -> tuple[str, ...]:
  """config.augment -> its steps in order ('none' and '' give ()).

  Raises ValueError naming an unknown or repeated step and the accepted.
  """
  names = tuple(name.strip() for name in text.split(','))
  accepted = (f'accepted: none, or a comma-separated list of '
              f'{", ".join(k for k in AUGMENTATIONS if k != "none")}')
  if names in (('none',), ('',)):
    return ()
  for name in names:
    if name not in AUGMENTATIONS or name == 'none':
      raise ValueError(f'unknown augment step {name!r} in {text!r}; '
                       f'{accepted}')
  if len(set(names)) != len(names):
    raise ValueError(f'augment {text!r} names a step twice; {accepted}')
  return names


def augment_options(kind: str) -> dict:
  """The augment_kwargs keys of the steps of `kind` (config.augment), each
  with its default."""
  options = {}
  for name in parse_augment(kind):
    if name in MIX:
      options.update({k: inspect.signature(_mix).parameters[k].default
                      for k, steps in MIX_OPTIONS.items() if name in steps})
      continue
    parameters = list(inspect.signature(AUGMENTATIONS[name]).parameters.values())
    # Keyword-only ones (rrc's size) are set by the trainer, not the config.
    options.update({p.name: p.default for p in parameters[2:]
                    if p.kind != p.KEYWORD_ONLY})
  return options


# What each option accepts: (test of a value, its description).
_RANGE = (lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(
    isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) and
          0 < v[0] <= v[1] < float('inf'), 'LOW,HIGH with 0 < LOW <= HIGH')
_SHARE = (lambda v: _RANGE[0](v) and v[1] <= 1,
          'LOW,HIGH with 0 < LOW <= HIGH <= 1')
_PROBABILITY = (lambda v: isinstance(v, (int, float)) and not isinstance(
    v, bool) and 0 <= v <= 1, 'a number in [0, 1]')
_POSITIVE = (lambda v: isinstance(v, (int, float)) and not isinstance(
    v, bool) and 0 < v < float('inf'), 'a number > 0')
_RULES = {
    'scale': _SHARE, 'ratio': _RANGE, 'erasing_area': _SHARE,
    'erasing_ratio': _RANGE, 'erasing_prob': _PROBABILITY,
    'randaugment_prob': _PROBABILITY, 'mix_prob': _PROBABILITY,
    'mix_switch_prob': _PROBABILITY, 'mixup_alpha': _POSITIVE,
    'cutmix_alpha': _POSITIVE,
    'randaugment_ops': (lambda v: isinstance(v, int) and not isinstance(
        v, bool) and 1 <= v <= len(randaugment.OPS),
                        f'an integer from 1 to {len(randaugment.OPS)}'),
    'randaugment_magnitude': (lambda v: isinstance(v, (int, float)) and not
                              isinstance(v, bool) and 0 <= v <= 10,
                              'a number in [0, 10]'),
}


def check_options(kind: str, options: dict):
  """ValueError naming an unknown step, a key of augment_kwargs the steps
  of `kind` do not take, or a value out of its range."""
  accepted = augment_options(kind)
  for key, value in options.items():
    if key not in accepted:
      names = ', '.join(f'augment_kwargs.{k}' for k in sorted(accepted))
      raise ValueError(f"unknown config key 'augment_kwargs.{key}' for "
                       f"augment {kind}; accepted: {names or 'none'}")
    test, description = _RULES[key]
    if not test(value):
      raise ValueError(f'augment_kwargs.{key} must be {description}, got '
                       f'{value!r}')


def mixes(kind: str) -> bool:
  """Whether augmentation `kind` mixes labels (its targets are soft)."""
  return any(name in MIX for name in parse_augment(kind))


def augment(images: jax.Array, key: jax.Array, kind: str,
            options: Optional[dict] = None, targets=None, size=None):
  """Applies the steps of `kind` (config.augment) in order with `options`
  (config.augment_kwargs); the same (images, key) give the same result on
  any number of devices (the draws cover the global batch).

  Returns the images or, when `targets` (one-hot float labels) are given,
  (images, targets), mixed if a step mixes. A single step draws from `key`
  itself, step i of several from fold_in(key, i). `size` ((height, width)):
  what rrc resizes its crops to; other steps keep the images' size.
  """
  names = parse_augment(kind)
  options = dict(options or {})
  mixed = False
  for i, name in enumerate(names):
    step_key = key if len(names) == 1 else jax.random.fold_in(key, i)
    if name in MIX:
      if not mixed:  # Both asked for: one of them per batch, where first.
        kinds = tuple(k for k in MIX if k in names)
        images, targets = _mix(images, targets, step_key, kinds, **{
            k: options[k] for k in MIX_OPTIONS if k in options})
        mixed = True
      continue
    accepted = augment_options(name)
    extra = {'size': size} if name == 'rrc' and size else {}
    images = AUGMENTATIONS[name](images, step_key, **{
        k: v for k, v in options.items() if k in accepted}, **extra)
  return images if targets is None else (images, targets)
