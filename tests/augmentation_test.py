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
