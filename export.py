"""--mode=export: a trained checkpoint as files other programs can run.

The exported function takes uint8 images (batch, height, width, channels)
of the run's training size, decoded, resized and centre-cropped on the host
as eval does, and returns float32 class probabilities. Scaling to [0, 1],
`normalize`, the EMA parameters (when the run evaluates with them) and
`eval_flip` are inside it, so nothing of this project is needed to run it:

  * `jax`: `model.jax_exported`, a `jax.export` serialization with a
    symbolic batch dimension, for CPU and CUDA;
  * `saved_model`: a TensorFlow SavedModel, through jax2tf's native
    serialization (the one jax2tf route left; orbax-export would pin an
    older orbax-checkpoint than the trainer's), signature `serving_default`:
    `images` (uint8) -> `probabilities` (float32);
  * `onnx`: `model.onnx` through jax2onnx, ONNX opset 23, input `images`
    (uint8, symbolic batch) -> `probabilities`.

`model.json` beside them says what the model expects and the SHA-256 of
every file written. Each artifact is checked against the checkpoint's own
predictions before the export is called done.
"""

import contextlib
import functools
import logging as logging_lib
import os
import shutil
import tempfile
from unittest import mock

from absl import logging
import flax.linen as nn
import jax
from jax import export as jax_export
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np

import distributed
import inference
import steps
import warm_start
import workdir_files

FORMATS = ('jax', 'saved_model', 'onnx')
JAX_FILE = 'model.jax_exported'
SAVED_MODEL_DIR = 'saved_model'
ONNX_FILE = 'model.onnx'
ONNX_OPSET = 23
ONNX_INSTALL = 'pip install --no-deps -r requirements-onnx.txt'
INFO_FILE = 'model.json'
# Exported probabilities must match the checkpoint's within this. float32:
# the same XLA program, up to fusion and summation order. bfloat16 compute
# keeps 8 significant bits (a relative step of 2**-8 = 3.9e-3), and the
# exported program rounds at other points than the jitted one (constants
# folded, other fusions): 1e-2 is under three such steps of a probability.
TOLERANCES = {'float32': 1e-5, 'bfloat16': 1e-2}


class ExportError(ValueError):
  """Bad export arguments; nothing was written."""


class FormatError(RuntimeError):
  """One format could not be written or did not match; the message names it."""


def parse_formats(text: str) -> list[str]:
  formats = [f.strip() for f in text.split(',') if f.strip()]
  unknown = [f for f in formats if f not in FORMATS]
  if not formats or unknown:
    raise ExportError(f'--formats={text!r}: unknown format '
                      f'{(unknown or [text])[0]!r}; accepted: a comma-'
                      f'separated list of {", ".join(FORMATS)}')
  return list(dict.fromkeys(formats))


def check_export_dir(export_dir: str):
  """ExportError unless `export_dir` is (or can be made) a writable folder."""
  if os.path.exists(export_dir) and not os.path.isdir(export_dir):
    raise ExportError(f'--export_dir={export_dir} is a file; accepted: a '
                      f'folder (made if missing)')
  parent = export_dir
  while not os.path.exists(parent):
    parent = os.path.dirname(parent) or '.'
  if not os.access(parent, os.W_OK):
    raise ExportError(f'--export_dir={export_dir}: {parent} is not writable')


def predict_fn(state: steps.TrainState, use_ema: bool, flip: bool):
  """uint8 images -> probabilities, with the variables as constants."""
  variables = jax.tree.map(np.asarray, state.eval_variables(use_ema))
  apply_fn = state.apply_fn

  def predict(images):
    logits = steps.eval_logits(_Variables(apply_fn, variables), images,
                               flip=flip)
    return jax.nn.softmax(logits, axis=-1)

  return predict


class _Variables:
  """What steps.eval_logits reads of a TrainState: apply_fn and the eval
  variables."""

  def __init__(self, apply_fn, variables):
    self.apply_fn = apply_fn
    self._variables = variables

  def eval_variables(self, use_ema=False):
    del use_ema  # Already chosen.
    return self._variables


def _export_jax(predict, image_shape, folder: str):
  batch, = jax_export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8)
  try:
    exported = jax_export.export(jax.jit(predict),
                                 platforms=('cpu', 'cuda'))(spec)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('jax: no CUDA lowering (%s); exporting for CPU only',
                    inference.image_folder.first_line(e, 120))
    exported = jax_export.export(jax.jit(predict), platforms=('cpu',))(spec)
  path = os.path.join(folder, JAX_FILE)
  with open(path, 'wb') as f:
    f.write(exported.serialize())
  return [path], exported.platforms


@contextlib.contextmanager
def _stablehlo_readable_by_tensorflow():
  """Serializes StableHLO for a consumer 12 weeks old instead of 4.

  jax 0.10.2 writes StableHLO 1.15 by default, in which CHLO ops such as
  erf (exact GELU: ViT, ConvNeXt; NNX initializers) are composites that
  the pinned TensorFlow 2.21 (StableHLO 1.13.7) cannot read. jax.export has
  no option for the target version, so its one serialization function is
  swapped for the duration (our own code: no library offers this).
  """
  # pylint: disable=g-import-not-at-top,protected-access
  from jax._src.export import _export
  from jax._src.lib import _jax
  from jax._src.lib.mlir.dialects import hlo
  from jax._src import xla_bridge
  original = _export._module_to_bytecode

  def to_bytecode(module):
    version = hlo.get_version_from_compatibility_requirement(
        hlo.StablehloCompatibilityRequirement.WEEK_12)
    return _jax.mlir.serialize_portable_artifact(
        module, version, xla_bridge.get_backend().serialize_with_sdy)

  _export._module_to_bytecode = to_bytecode
  try:
    yield
  finally:
    _export._module_to_bytecode = original


@contextlib.contextmanager
def _logging_kept():
  """Undoes what TensorFlow does to Python logging while it saves or loads
  a SavedModel (it sets the absl logger to WARNING and adds a root
  handler): the rest of the process logs as before."""
  absl_logger, root = logging_lib.getLogger('absl'), logging_lib.getLogger()
  level, handlers = absl_logger.level, list(root.handlers)
  try:
    yield
  finally:
    absl_logger.setLevel(level)
    root.handlers[:] = handlers


def _export_saved_model(predict, image_shape, folder: str):
  with _stablehlo_readable_by_tensorflow(), _logging_kept():
    return _write_saved_model(predict, image_shape, folder)


def _write_saved_model(predict, image_shape, folder: str):
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # 2 s to import; only for this format.
  from jax.experimental import jax2tf
  height, width, channels = image_shape
  converted = jax2tf.convert(
      predict, polymorphic_shapes=[f'(b, {height}, {width}, {channels})'],
      with_gradient=False)
  module = tf.Module()

  @tf.function(autograph=False, input_signature=[tf.TensorSpec(
      [None, height, width, channels], tf.uint8, name='images')])
  def serve(images):
    return {'probabilities': converted(images)}

  module.serve = serve
  path = os.path.join(folder, SAVED_MODEL_DIR)
  tf.saved_model.save(module, path, signatures={'serving_default': serve})
  return [os.path.join(root, name) for root, _, names in os.walk(path)
          for name in names], ['cpu']


_FLAX_MAX_POOL = nn.max_pool


def max_pool_over_planes(inputs, window_shape, strides=None,
                         padding='VALID'):
  """flax.linen.max_pool, the same values, pooled one (image, channel)
  plane at a time.

  jax2onnx lowers a max window to an ONNX MaxPool over every axis of its
  operand, and ONNX Runtime pools over at most three: the (1, k, k, 1)
  window of an NHWC pool fails there ("Unsupported pooling size"). Over
  planes of shape (N * C, H, W) the window is (1, k, k).
  """
  strides = tuple(strides or (1,) * len(window_shape))
  if inputs.ndim != len(window_shape) + 2:  # Not (N, spatial..., C).
    return _FLAX_MAX_POOL(inputs, window_shape, strides, padding)
  spatial = inputs.shape[1:-1]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(spatial, window_shape, strides, padding)
  planes = jnp.moveaxis(inputs, -1, 1)
  flat = planes.reshape((planes.shape[0] * planes.shape[1], *spatial))
  pooled = lax.reduce_window(flat, -jnp.inf, lax.max, (1, *window_shape),
                             (1, *strides), ((0, 0), *map(tuple, padding)))
  return jnp.moveaxis(pooled.reshape((*planes.shape[:2], *pooled.shape[1:])),
                      1, -1)


def _export_onnx(predict, image_shape, folder: str):
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise FormatError(f'jax2onnx is not installed: {ONNX_INSTALL}') from e
  batch, = jax_export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8)
  # jax2onnx converts Flax modules it knows through plugins of its own, and
  # its Linen BatchNorm plugin loses a layout transpose inside residual
  # blocks (ONNX Runtime refuses the graph: "Incompatible dimensions").
  # Tracing to a plain jaxpr first leaves it only JAX primitives to convert,
  # which it does correctly for every model here.
  # The models' max-pools (flax.linen.max_pool, looked up when called) are
  # traced in the form ONNX Runtime runs.
  with mock.patch.object(nn, 'max_pool', max_pool_over_planes):
    closed = jax.make_jaxpr(predict)(spec)

  def plain(images):
    return jax.core.eval_jaxpr(closed.jaxpr, closed.consts, images)[0]

  model = jax2onnx.to_onnx(plain, [spec], model_name='classifier',
                           opset=ONNX_OPSET, input_names=['images'],
                           output_names=['probabilities'])
  path = os.path.join(folder, ONNX_FILE)
  # One file, weights inside (the format's limit is 2 GiB; the largest
  # table model, vit_base with eval_flip, is 0.7 GiB).
  with open(path, 'wb') as f:
    f.write(model.SerializeToString())
  return [path], [f'opset {ONNX_OPSET}']


def _check_jax(folder, images):
  with open(os.path.join(folder, JAX_FILE), 'rb') as f:
    exported = jax_export.deserialize(bytearray(f.read()))
  return np.asarray(exported.call(images))


def _check_saved_model(folder, images):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with _logging_kept():
    loaded = tf.saved_model.load(os.path.join(folder, SAVED_MODEL_DIR))
    out = loaded.signatures['serving_default'](images=tf.constant(images))
    return out['probabilities'].numpy()


def _check_onnx(folder, images):
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise FormatError(f'onnxruntime is not installed: {ONNX_INSTALL}') from e
  session = onnxruntime.InferenceSession(os.path.join(folder, ONNX_FILE),
                                         providers=['CPUExecutionProvider'])
  return session.run(['probabilities'], {'images': images})[0]


WRITERS = {'jax': (_export_jax, _check_jax),
           'saved_model': (_export_saved_model, _check_saved_model),
           'onnx': (_export_onnx, _check_onnx)}


def export(config: ml_collections.ConfigDict, workdir: str,
           checkpoint: str = 'best', formats: str = ','.join(FORMATS),
           export_dir: str = '') -> tuple[dict, list[str]]:
  """Writes the chosen formats of checkpoint `checkpoint` to export_dir
  (default W/export) and model.json; returns (model.json's content, the
  errors of formats that failed, one line each)."""
  wanted = parse_formats(formats)
  export_dir = export_dir or os.path.join(workdir, 'export')
  check_export_dir(export_dir)
  info = workdir_files.load_dataset_info(workdir)
  step = inference.resolve_step(workdir, checkpoint)
  mesh = distributed.Mesh()
  state = inference.restore(workdir, config, step, info, mesh)
  image_shape = tuple(info['image_shape'])
  predict = predict_fn(state, config.eval_with_ema, config.eval_flip)
  # What the checkpoint itself predicts, for the check of every artifact.
  images = np.random.default_rng(0).integers(
      0, 256, (4, *image_shape), dtype=np.uint8)
  expected = np.asarray(jax.jit(functools.partial(
      steps.predict_step, use_ema=config.eval_with_ema,
      flip=config.eval_flip))(state, jnp.asarray(images)))
  expected = np.asarray(jax.nn.softmax(expected, axis=-1))
  tolerance = TOLERANCES.get(
      str(config.model_kwargs.to_dict().get('dtype')), TOLERANCES['float32'])
  os.makedirs(export_dir, exist_ok=True)
  files, platforms, errors = {}, {}, []
  for name in wanted:
    write, check = WRITERS[name]
    # Written into a temporary folder and moved in when it matches, so a
    # failed format leaves nothing half written.
    with tempfile.TemporaryDirectory(dir=export_dir) as scratch:
      try:
        written, platforms[name] = write(predict, image_shape, scratch)
        got = check(scratch, images)
        error = float(np.max(np.abs(got - expected)))
        if not error <= tolerance:
          raise FormatError(f'probabilities differ from the checkpoint\'s by '
                            f'{error:.2e} (tolerance {tolerance})')
      except Exception as e:  # pylint: disable=broad-except
        platforms.pop(name, None)
        errors.append(f'{name}: {type(e).__name__}: '
                      f'{inference.image_folder.first_line(e, 160)}')
        continue
      for path in written:
        files[os.path.relpath(path, scratch)] = warm_start.sha256(path)
      for entry in os.listdir(scratch):
        target = os.path.join(export_dir, entry)
        if os.path.isdir(target):
          shutil.rmtree(target)
        elif os.path.exists(target):
          os.remove(target)
        shutil.move(os.path.join(scratch, entry), target)
      logging.info('Exported %s (%s), checked against checkpoint %d: largest '
                   'probability difference %.1e', name,
                   ', '.join(platforms[name]), step, error)
  record = {
      'class_names': info['class_names'],
      'num_classes': info['num_classes'],
      'image_size': list(image_shape[:2]), 'channels': image_shape[2],
      'input': 'uint8 [batch, height, width, channels], resized and '
               'centre-cropped as eval does (eval_crop_pct, interpolation)',
      'output': 'float32 probabilities [batch, num_classes]',
      'normalize': config.normalize, 'eval_crop_pct': config.eval_crop_pct,
      'interpolation': config.interpolation, 'eval_flip': config.eval_flip,
      'ema': bool(config.eval_with_ema), 'model': config.model,
      'workdir': os.path.abspath(workdir), 'checkpoint_step': step,
      'formats': {name: ({'opset': ONNX_OPSET} if name == 'onnx' else
                         {'platforms': list(platforms[name])})
                  for name in wanted if name in platforms},
      'sha256': dict(sorted(files.items())),
  }
  workdir_files.write_json(os.path.join(export_dir, INFO_FILE), record)
  return record, errors
