"""Tests for randaugment.py: known answers of single ops, and the batch
transform's determinism."""

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import randaugment


def ramp(channels=1, size=8):
  """Values 0, 1/255, ... in a (size, size, channels) image."""
  values = jnp.arange(size * size * channels) % 256 / 255.0
  return values.reshape(size, size, channels).astype(jnp.float32)


def test_solarize_inverts_above_the_threshold():
  image = jnp.array([0.1, 0.45, 0.55, 0.9]).reshape(2, 2, 1)
  out = randaugment.apply_op('solarize', image, 5.0)  # Threshold 0.5.
  np.testing.assert_allclose(out.ravel(), [0.1, 0.45, 0.45, 0.1], atol=1e-6)


def test_posterize_keeps_the_top_bits():
  image = jnp.array([255, 200, 17, 8]).reshape(2, 2, 1) / 255.0
  out = randaugment.apply_op('posterize', image, 10.0)  # 4 bits kept.
  np.testing.assert_allclose(np.round(np.asarray(out).ravel() * 255),
                             [240, 192, 16, 0])
  np.testing.assert_allclose(randaugment.apply_op('posterize', image, 0.0),
                             image, atol=1e-6)  # All 8 bits.


def test_autocontrast_stretches_each_channel():
  image = jnp.stack([jnp.linspace(0.2, 0.6, 16).reshape(4, 4),
                     jnp.full((4, 4), 0.3)], -1)
  out = randaugment.apply_op('autocontrast', image, 9.0)
  assert float(out[..., 0].min()) == 0 and float(out[..., 0].max()) == 1
  np.testing.assert_allclose(out[..., 1], 0.3)  # Flat: left alone.


def test_equalize_flattens_the_histogram_as_pil():
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  pixels = (rng.beta(2, 5, (16, 16)) * 255).astype(np.uint8)
  expected = np.asarray(ImageOps.equalize(Image.fromarray(pixels)))
  out = randaugment.apply_op('equalize', jnp.asarray(pixels)[..., None]
                             / 255.0, 9.0)
  np.testing.assert_array_equal(np.round(np.asarray(out)[..., 0] * 255),
                                expected)


def test_translate_shifts_by_the_magnitude():
  image = jnp.zeros((20, 20, 1)).at[10, 10].set(1.0)
  out = randaugment.apply_op('translate_x', image, 10.0, 1.0)  # 0.45 * 20.
  assert np.argwhere(np.asarray(out)[..., 0] > 0.5).tolist() == [[10, 1]]


def test_rotate_is_dm_pix_rotation_by_the_magnitude():
  image = ramp(3, size=12)
  for sign in (-1.0, 1.0):  # Magnitude 5: 15 degrees.
    expected = dm_pix.rotate(image, sign * np.deg2rad(15.0), mode='constant',
                             cval=0.0)
    np.testing.assert_allclose(
        randaugment.apply_op('rotate', image, 5.0, sign),
        jnp.clip(expected, 0, 1), atol=1e-6)


@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('name', list(randaugment.WARPS))
def test_each_warp_is_dm_pix_affine_transform_of_its_map(name, channels):
  image = jax.random.uniform(jax.random.PRNGKey(7), (11, 9, channels))
  for level, sign in ((0.35, -1.0), (0.9, 1.0)):
    matrix, offset = randaugment.WARPS[name](image.shape, level, sign)
    expected = dm_pix.affine_transform(image, matrix, offset=offset,
                                       mode='constant', cval=0.0)
    np.testing.assert_allclose(randaugment._affine(image, matrix, offset),
                               expected, atol=1e-5)


def test_colour_leaves_grayscale_images():
  image = ramp(1)
  np.testing.assert_array_equal(randaugment.apply_op('colour', image, 9.0),
                                jnp.clip(image, 0, 1))


@pytest.mark.parametrize('name', list(randaugment.OPS))
@pytest.mark.parametrize('channels', [1, 3])
def test_every_op_keeps_shape_and_range(name, channels):
  image = ramp(channels)
  for sign in (-1.0, 1.0):
    out = randaugment.apply_op(name, image, 9.0, sign)
    assert out.shape == image.shape and out.dtype == image.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_batch_transform_is_a_function_of_the_key():
  images = jax.random.uniform(jax.random.PRNGKey(0), (6, 12, 12, 3))
  fn = jax.jit(randaugment.randaugment)
  a = fn(images, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(a, fn(images, jax.random.PRNGKey(1)))
  assert not np.array_equal(a, fn(images, jax.random.PRNGKey(2)))
  assert not np.array_equal(a, images)


@pytest.mark.parametrize('channels', [1, 3])
def test_a_batch_gives_each_image_its_own_op(channels):
  # The batch warps every image once, by its op's map; each image must
  # still come out as that op alone would make it.
  names = list(randaugment.OPS)
  images = jax.random.uniform(jax.random.PRNGKey(0),
                              (2 * len(names), 12, 12, channels))
  ops = jnp.arange(2 * len(names)) % len(names)
  signs = jnp.where(jnp.arange(2 * len(names)) < len(names), 1.0, -1.0)
  apply = jnp.ones(2 * len(names), bool).at[-1].set(False)
  out = jax.jit(jax.vmap(lambda *a: randaugment._one_op(*a, level=0.7)))(
      images, ops, apply, signs)
  for i, (image, op, sign) in enumerate(zip(images, ops, signs)):
    expected = (randaugment.apply_op(names[op], image, 7.0, sign)
                if apply[i] else image)
    np.testing.assert_allclose(out[i], expected, atol=1e-6,
                               err_msg=f'{names[op]}, sign {sign}')
