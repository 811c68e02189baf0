"""Tests for augmentation.py: uint8 scaling and deterministic augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import augmentation


def images():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.integers(0, 256, (6, 12, 10, 3), dtype=np.uint8))


def test_uint8_scaling_equals_the_host_division_exactly():
  every = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
  on_device = jax.jit(augmentation.to_float)(jnp.asarray(every))
  np.testing.assert_array_equal(np.asarray(on_device),
                                every.astype(np.float32) / np.float32(255))
  floats = jnp.ones((2, 2), jnp.float32) * 0.5
  assert augmentation.to_float(floats) is floats


@pytest.mark.parametrize('kind', ['crop', 'crop_flip'])
def test_same_key_same_batch_other_key_other_batch(kind):
  x = augmentation.to_float(images())
  fn = jax.jit(augmentation.augment, static_argnums=2)
  a = fn(x, jax.random.PRNGKey(1), kind)
  np.testing.assert_array_equal(a, fn(x, jax.random.PRNGKey(1), kind))
  assert not np.array_equal(a, fn(x, jax.random.PRNGKey(2), kind))
  assert a.shape == x.shape and a.dtype == x.dtype


def test_none_leaves_images_untouched():
  x = augmentation.to_float(images())
  np.testing.assert_array_equal(
      augmentation.augment(x, jax.random.PRNGKey(1), 'none'), x)


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
  x = augmentation.to_float(images())
  out = np.asarray(augmentation.augment(x, jax.random.PRNGKey(3), 'crop'))
  p = augmentation.CROP_PADDING
  padded = np.pad(np.asarray(x), ((0, 0), (p, p), (p, p), (0, 0)))
  for image, result in zip(padded, out):
    windows = [image[i:i + 12, j:j + 10] for i in range(2 * p + 1)
               for j in range(2 * p + 1)]
    assert any(np.array_equal(result, w) for w in windows)


def test_flip_mirrors_some_images_left_right():
  x = augmentation.to_float(images())
  flipped = np.asarray(augmentation._random_flip(x, jax.random.PRNGKey(0)))  # pylint: disable=protected-access
  mirrored = [np.array_equal(f, np.asarray(i)[:, ::-1])
              for f, i in zip(flipped, x)]
  kept = [np.array_equal(f, np.asarray(i)) for f, i in zip(flipped, x)]
  assert all(m or k for m, k in zip(mirrored, kept))
  assert any(mirrored) and any(kept)


@pytest.mark.parametrize('text,channels,expected', [
    ('none', 3, None),
    ('imagenet', 3, ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
    ('imagenet', 1, ((0.449,), (0.226,))),
    ('0.5/0.25', 3, ((0.5,) * 3, (0.25,) * 3)),
    ('0.1,0.2,0.3/1,2,4', 3, ((0.1, 0.2, 0.3), (1.0, 2.0, 4.0))),
])
def test_normalize_values(text, channels, expected):
  result = augmentation.parse_normalize(text, channels)
  if expected is None:
    assert result is None
  else:
    np.testing.assert_allclose(result, expected, rtol=1e-6)


@pytest.mark.parametrize('text', ['imagenett', '0.5', '0.5/0', '1,2/3',
                                  '1,2/3,4', 'a/b', '0.5/inf'])
def test_bad_normalize_is_named(text):
  with pytest.raises(ValueError, match=f'normalize {text!r} is not usable; '
                                       'accepted: none, imagenet'):
    augmentation.parse_normalize(text)


def test_normalized_apply_feeds_the_model_normalized_pixels():
  apply = augmentation.normalized_apply(lambda v, x: x, (0.5,), (0.25,))
  np.testing.assert_allclose(apply({}, jnp.array([0.0, 0.5, 1.0])),
                             [-2.0, 0.0, 2.0])


def _photo_batch():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.random((4, 16, 16, 3), dtype=np.float32))


def test_rrc_is_a_function_of_the_key():
  images = _photo_batch()
  a = augmentation.augment(images, jax.random.PRNGKey(1), 'rrc')
  b = augmentation.augment(images, jax.random.PRNGKey(1), 'rrc')
  c = augmentation.augment(images, jax.random.PRNGKey(2), 'rrc')
  assert a.shape == images.shape
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_rrc_of_the_whole_image_is_the_image_or_its_mirror():
  images = _photo_batch()
  out = augmentation.augment(images, jax.random.PRNGKey(3), 'rrc',
                             {'scale': (1.0, 1.0), 'ratio': (1.0, 1.0)})
  for got, image in zip(np.asarray(out), np.asarray(images)):
    assert (np.allclose(got, image, atol=1e-5) or
            np.allclose(got, image[:, ::-1], atol=1e-5))


def test_rrc_of_a_quarter_magnifies_a_corner():
  # A box of a quarter of the area, square: a quadrant (or a box between
  # quadrants) magnified twice; each output row varies half as fast.
  image = jnp.tile(jnp.arange(16, dtype=jnp.float32)[None, :, None],
                   (16, 1, 1))[None]
  out = np.asarray(augmentation.augment(
      image, jax.random.PRNGKey(0), 'rrc',
      {'scale': (0.25, 0.25), 'ratio': (1.0, 1.0)}))[0, 8, :, 0]
  span = abs(out[-2] - out[1])
  assert 6 < span < 7.5  # 8 source pixels over the row, less the edges.


@pytest.mark.parametrize('options,message', [
    ({'area': (0.1, 1)}, "unknown config key 'augment_kwargs.area' for "
                         "augment rrc; accepted: augment_kwargs.ratio, "
                         "augment_kwargs.scale"),
    ({'scale': (0.5, 2)}, 'augment_kwargs.scale must be LOW,HIGH with 0 < '
                          'LOW <= HIGH <= 1, got (0.5, 2)'),
    ({'ratio': (2, 1)}, 'augment_kwargs.ratio must be LOW,HIGH'),
])
def test_bad_rrc_options_are_named(options, message):
  with pytest.raises(ValueError) as e:
    augmentation.check_options('rrc', options)
  assert str(e.value).startswith(message)


def test_crop_takes_no_options():
  with pytest.raises(ValueError, match="accepted: none"):
    augmentation.check_options('crop', {'scale': (0.5, 1)})


RECIPE = 'crop_flip,randaugment,mixup,cutmix,random_erasing'


def _targets(n=8, classes=4):
  return jax.nn.one_hot(jnp.arange(n) % classes, classes)


# randaugment is in RECIPE (and in randaugment_test.py): its program takes
# seconds to compile.
@pytest.mark.parametrize('kind', ['random_erasing', 'mixup', 'cutmix',
                                  RECIPE])
def test_each_step_is_a_function_of_the_key(kind):
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 16, 16, 3))
  fn = jax.jit(lambda x, key: augmentation.augment(
      x, key, kind, {'erasing_prob': 1.0}, targets=_targets()))
  a_images, a_targets = fn(x, jax.random.PRNGKey(1))
  b_images, b_targets = fn(x, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(a_images, b_images)
  np.testing.assert_array_equal(a_targets, b_targets)
  assert not np.array_equal(a_images, fn(x, jax.random.PRNGKey(2))[0])
  assert a_images.shape == x.shape
  np.testing.assert_allclose(a_targets.sum(-1), 1, rtol=1e-6)


def test_mixup_mixes_images_and_targets_by_one_lambda():
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 4, 4, 1))
  images, targets = augmentation.augment(x, jax.random.PRNGKey(3), 'mixup',
                                         {}, targets=_targets())
  lam = float(targets[0, 0])  # Image 0 (class 0) meets image 7 (class 3).
  assert 0 < lam < 1 and float(targets[0, 3]) == pytest.approx(1 - lam)
  np.testing.assert_allclose(images, lam * x + (1 - lam) * x[::-1],
                             rtol=1e-5, atol=1e-6)


def test_cutmix_box_area_is_the_targets_share():
  x = jnp.zeros((8, 32, 32, 1)).at[4:].set(1.0)  # The reverse is 1s.
  for seed in range(5):
    images, targets = augmentation.augment(
        x, jax.random.PRNGKey(seed), 'cutmix', {}, targets=_targets())
    pasted = float(images[0].mean())  # Image 0 got a box of image 7.
    assert float(targets[0, 3]) == pytest.approx(pasted, abs=1e-6)
    assert float(targets[0, 0]) == pytest.approx(1 - pasted, abs=1e-6)


def test_mix_prob_zero_leaves_the_batch():
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 8, 8, 1))
  images, targets = augmentation.augment(
      x, jax.random.PRNGKey(1), 'mixup,cutmix', {'mix_prob': 0.0},
      targets=_targets())
  np.testing.assert_array_equal(images, x)
  np.testing.assert_array_equal(targets, _targets())


def test_random_erasing_fills_one_box_with_noise():
  x = jnp.full((16, 20, 20, 1), 0.5)
  out = augmentation.augment(x, jax.random.PRNGKey(0), 'random_erasing',
                             {'erasing_prob': 1.0, 'erasing_area': (0.25,
                                                                   0.25)})
  for image in np.asarray(out):
    changed = np.argwhere(image[..., 0] != 0.5)
    rows, cols = np.ptp(changed[:, 0]) + 1, np.ptp(changed[:, 1]) + 1
    assert len(changed) <= rows * cols <= 20 * 20
    assert 0.15 * 400 <= rows * cols <= 0.35 * 400  # About a quarter.
  untouched = augmentation.augment(x, jax.random.PRNGKey(0),
                                   'random_erasing', {'erasing_prob': 0.0})
  np.testing.assert_array_equal(untouched, x)


def test_one_step_keeps_drawing_from_the_key_itself():
  """A single step draws as before the pipeline existed: crop_flip alone is
  bitwise what it was."""
  x = augmentation.to_float(images())
  key = jax.random.PRNGKey(4)
  np.testing.assert_array_equal(augmentation.augment(x, key, 'crop_flip'),
                                augmentation._crop_flip(x, key))


@pytest.mark.parametrize('kind,options,message', [
    ('crop,flop', {}, "unknown augment step 'flop' in 'crop,flop'; accepted: "
     'none, or a comma-separated list of crop, crop_flip, rrc'),
    ('crop,crop', {}, "augment 'crop,crop' names a step twice"),
    ('mixup', {'mixup_alpha': 0}, 'augment_kwargs.mixup_alpha must be a '
     'number > 0, got 0'),
    ('mixup', {'cutmix_alpha': 1.0}, "unknown config key "
     "'augment_kwargs.cutmix_alpha' for augment mixup; accepted: "
     'augment_kwargs.mix_prob, augment_kwargs.mix_switch_prob, '
     'augment_kwargs.mixup_alpha'),
    ('cutmix', {'mix_prob': 1.5}, 'augment_kwargs.mix_prob must be a number '
     'in [0, 1], got 1.5'),
    ('random_erasing', {'erasing_area': (0.5, 2)}, 'augment_kwargs.'
     'erasing_area must be LOW,HIGH with 0 < LOW <= HIGH <= 1'),
    ('randaugment', {'randaugment_magnitude': 11}, 'augment_kwargs.'
     'randaugment_magnitude must be a number in [0, 10], got 11'),
    ('randaugment', {'randaugment_ops': 0}, 'augment_kwargs.randaugment_ops '
     'must be an integer from 1 to 13, got 0'),
])
def test_bad_steps_and_options_are_named(kind, options, message):
  with pytest.raises(ValueError) as e:
    augmentation.check_options(kind, options)
  assert str(e.value).startswith(message)
  assert '\n' not in str(e.value)
