"""Tests for export.py: each format, loaded with nothing of this project,
gives the checkpoint's own probabilities."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
import export
import inference
import steps
import train
import warm_start
import workdir_files

# Loaded in a fresh process that imports only jax, tensorflow or
# onnxruntime.
LOAD_JAX = '''
import sys, numpy as np
from jax import export
exported = export.deserialize(bytearray(open(sys.argv[1], 'rb').read()))
images = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(exported.call(images)))
'''
LOAD_SAVED_MODEL = '''
import sys, numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
images = tf.constant(np.load(sys.argv[2]))
out = model.signatures['serving_default'](images=images)
np.save(sys.argv[3], out['probabilities'].numpy())
'''
LOAD_ONNX = '''
import sys, numpy as np, onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1])
(probabilities,) = session.run(['probabilities'],
                               {'images': np.load(sys.argv[2])})
np.save(sys.argv[3], probabilities)
'''


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return conftest.make_idx_dir(str(tmp_path_factory.mktemp('data')),
                               num_train=32, num_test=20)


def run_for(tmp_path_factory, data_dir, name, **overrides):
  workdir = str(tmp_path_factory.mktemp(name))
  train.train_and_evaluate(conftest.tiny_config(data_dir, **{
      'num_train_steps': 8, **overrides}), workdir)
  return workdir


@pytest.fixture(scope='module')
def cnn_run(tmp_path_factory, data_dir):
  # EMA and eval_flip: both must be inside the exported function.
  return run_for(tmp_path_factory, data_dir, 'cnn', ema_decay=0.9,
                 eval_with_ema=True, eval_flip=True,
                 normalize='0.5/0.25')


def checkpoint_probabilities(workdir, images):
  """--mode=predict's probabilities for these uint8 images."""
  config = workdir_files.load_config(workdir)
  info = workdir_files.load_dataset_info(workdir)
  step = inference.resolve_step(workdir, 'best')
  state = inference.restore(workdir, config, step, info,
                            inference.distributed.Mesh())
  logits = steps.predict_step(state, jnp.asarray(images),
                              use_ema=config.eval_with_ema,
                              flip=config.eval_flip)
  return np.asarray(jax.nn.softmax(logits, axis=-1))


@pytest.mark.parametrize('formats', [
    'jax,onnx',
    # TensorFlow's import and conversion take about 20 s: make test-all, CI.
    pytest.param('jax,saved_model', marks=pytest.mark.slow)])
def test_every_format_gives_the_checkpoints_probabilities(tmp_path, cnn_run,
                                                          formats):
  export_dir = str(tmp_path / 'export')
  record, errors = export.export(workdir_files.load_config(cnn_run), cnn_run,
                                 formats=formats, export_dir=export_dir)
  assert errors == []
  assert set(record['formats']) == set(formats.split(','))
  assert record['ema'] and record['eval_flip']
  assert record['normalize'] == '0.5/0.25'
  # Every file written is listed with its digest.
  written = {os.path.relpath(os.path.join(root, name), export_dir)
             for root, _, names in os.walk(export_dir) for name in names}
  assert written - {'model.json'} == set(record['sha256'])
  for path, digest in record['sha256'].items():
    assert warm_start.sha256(os.path.join(export_dir, path)) == digest
  images = np.random.default_rng(1).integers(0, 256, (5, 28, 28, 1),
                                             np.uint8)
  expected = checkpoint_probabilities(cnn_run, images)
  np.testing.assert_allclose(export._check_jax(export_dir, images), expected,
                             atol=1e-5)
  if 'saved_model' in formats:
    np.testing.assert_allclose(
        export._check_saved_model(export_dir, images), expected, atol=1e-5)
  if 'onnx' in formats:
    assert record['formats']['onnx'] == {'opset': export.ONNX_OPSET}
    np.testing.assert_allclose(export._check_onnx(export_dir, images),
                               expected, atol=1e-5)


# A run and an export of their own (about 8 s): make test-all and CI.
@pytest.mark.slow
def test_a_bfloat16_model_is_checked_within_its_precision(
    tmp_path_factory, tmp_path, data_dir):
  workdir = run_for(tmp_path_factory, data_dir, 'bf16',
                    model_kwargs={'dtype': 'bfloat16'})
  export_dir = str(tmp_path / 'export')
  record, errors = export.export(workdir_files.load_config(workdir), workdir,
                                 formats='jax,onnx', export_dir=export_dir)
  # ONNX Runtime's CPU provider has no bfloat16 convolution, so the ONNX
  # file cannot be checked: that format fails in one line naming the op,
  # nothing of it is left, and the other format is still written.
  assert len(errors) == 1 and errors[0].startswith('onnx: '), errors
  assert 'Conv' in errors[0] and '\n' not in errors[0]
  assert set(record['formats']) == {'jax'}
  assert not os.path.exists(os.path.join(export_dir, export.ONNX_FILE))
  images = np.random.default_rng(3).integers(0, 256, (8, 28, 28, 1),
                                             np.uint8)
  got = export._check_jax(export_dir, images)
  expected = checkpoint_probabilities(workdir, images)
  np.testing.assert_allclose(got, expected, atol=export.TOLERANCES['bfloat16'])
  top2 = np.sort(expected, -1)[:, -2:]
  clear = top2[:, 1] - top2[:, 0] > export.TOLERANCES['bfloat16']
  np.testing.assert_array_equal(got.argmax(-1)[clear],
                                expected.argmax(-1)[clear])


@pytest.mark.parametrize('window,strides,padding', [
    ((2, 2), (2, 2), 'VALID'),               # convnet's, on odd sizes too.
    ((3, 3), (2, 2), ((1, 1), (1, 1))),      # The ResNets' ImageNet stem.
    ((3, 3), None, 'SAME'),
])
def test_max_pool_over_planes_gives_flax_max_pool(window, strides, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 13, 11, 3))
  np.testing.assert_array_equal(
      export.max_pool_over_planes(x, window, strides, padding),
      export.nn.max_pool(x, window, strides, padding))


@pytest.mark.parametrize('formats,message', [
    ('jax,tflite', "--formats='jax,tflite': unknown format 'tflite'; "
                   'accepted: a comma-separated list of jax, saved_model, '
                   'onnx'),
    ('', "--formats='': unknown format ''"),
])
def test_bad_formats_are_named(formats, message):
  with pytest.raises(export.ExportError) as e:
    export.parse_formats(formats)
  assert str(e.value).startswith(message)


def test_bad_targets_write_nothing(tmp_path, cnn_run):
  config = workdir_files.load_config(cnn_run)
  a_file = tmp_path / 'file'
  a_file.write_text('')
  with pytest.raises(export.ExportError, match='is a file; accepted: a '
                     'folder'):
    export.export(config, cnn_run, export_dir=str(a_file))
  with pytest.raises(inference.InferenceError, match="--checkpoint='7'"):
    export.export(config, cnn_run, checkpoint='7',
                  export_dir=str(tmp_path / 'e'))
  empty = tmp_path / 'empty'
  (empty / 'checkpoints').mkdir(parents=True)
  with pytest.raises(Exception, match='train'):
    export.export(config, str(empty), export_dir=str(tmp_path / 'e2'))
  assert not (tmp_path / 'e').exists() and not (tmp_path / 'e2').exists()


NNX_NET = '''
from flax import nnx


class Net(nnx.Module):
  def __init__(self, num_classes, *, rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.head = nnx.Linear(4, num_classes, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.bn(self.conv(x))).mean((1, 2)))
'''


# Each model family, loaded in fresh processes with only jax, tensorflow or
# onnxruntime (about 5 minutes; the ViT and ConvNeXt without SavedModel,
# their TensorFlow conversion takes minutes here): make test-all and CI.
@pytest.mark.slow
@pytest.mark.parametrize('model,kwargs,formats', [
    ('resnet20', {}, 'jax,saved_model,onnx'),
    # Max-pools: the ImageNet stem's 3x3, and convnet's 2x2 on odd sizes.
    ('resnet18', {'widths': (4, 4, 4, 4), 'stem_width': 4}, 'onnx'),
    ('convnet', {'widths': (8, 16)}, 'jax,onnx'),
    ('vit_tiny', {'patch_size': 7}, 'jax,onnx'),
    ('convnext_atto', {'stem_stride': 2}, 'jax,onnx'),
    ('nnx', {}, 'jax,saved_model,onnx'),
])
def test_artifacts_run_without_this_project(tmp_path_factory, tmp_path,
                                            data_dir, model, kwargs, formats):
  if model == 'nnx':
    path = tmp_path / 'net.py'
    path.write_text(NNX_NET)
    model = f'{path}:Net'
  workdir = run_for(tmp_path_factory, data_dir, 'run', model=model,
                    num_train_steps=4, model_kwargs=kwargs)
  export_dir = str(tmp_path / 'export')
  record, errors = export.export(workdir_files.load_config(workdir), workdir,
                                 formats=formats, export_dir=export_dir)
  assert errors == [], errors
  images = np.random.default_rng(2).integers(0, 256, (3, 28, 28, 1),
                                             np.uint8)
  np.save(tmp_path / 'images.npy', images)
  expected = checkpoint_probabilities(workdir, images)
  if model.endswith(':Net'):
    os.remove(model.rpartition(':')[0])  # The artifacts need no user code.
  loaders = {'jax': (LOAD_JAX, export.JAX_FILE),
             'saved_model': (LOAD_SAVED_MODEL, export.SAVED_MODEL_DIR),
             'onnx': (LOAD_ONNX, export.ONNX_FILE)}
  for code, artifact in (loaders[f] for f in formats.split(',')):
    out = tmp_path / 'out.npy'
    result = subprocess.run(
        [sys.executable, '-c', code, os.path.join(export_dir, artifact),
         str(tmp_path / 'images.npy'), str(out)], capture_output=True,
        text=True, timeout=240, cwd=str(tmp_path),
        env={**os.environ, 'PYTHONPATH': '', 'JAX_PLATFORMS': 'cpu'})
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)
  assert json.load(open(os.path.join(export_dir, 'model.json')))[
      'checkpoint_step'] == record['checkpoint_step']
