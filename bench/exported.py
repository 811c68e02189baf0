"""Inference images/s: our predict path against the exported artifacts.

For each model of MODELS, a short main.py run on the Fashion-MNIST files
(weights do not change the speed), exported by `--mode=export` with every
format;
then, on one fixed batch of uint8 images (already decoded, as every
contender receives them: decoding is the same PIL code for all and is left
out), the probabilities of:

  * predict: what `--mode=predict` runs, the jitted `steps.predict_step`
    on the restored TrainState plus the softmax;
  * jax.export: `model.jax_exported` deserialized, `Exported.call`;
  * SavedModel: `saved_model/` through TensorFlow, `serving_default`;
  * ONNX Runtime: `model.onnx` in an `InferenceSession` (CPU provider).

At batch 1 and 64, all in this process, timed windows alternating between
the contenders (windows.alternate_windows); each contender's result is
brought back to the host in every call (np.asarray), as a user's would be.
The table gives the median window and the ratio to the predict path.
"""

import shlex
import statistics
import sys

import numpy as np

import common
import windows

# name -> (model, model_kwargs).
MODELS = {'cnn': ('cnn', {}), 'resnet20': ('resnet20', {})}
BATCHES = (1, 64)
CONTENDERS = ('predict', 'jax.export', 'SavedModel', 'ONNX Runtime')
TRAIN_STEPS = 20
# Images per timed window at each batch size (a few seconds each).
WINDOW_IMAGES = {1: 400, 64: 6400}


class Runner:
  """Calls `fn` on a fixed batch; `run(n)` makes n calls."""

  def __init__(self, fn, images):
    self._fn, self._images = fn, images

  def run(self, num_steps):
    for _ in range(num_steps):
      np.asarray(self._fn(self._images))


def contender_fns(workdir, export_dir):
  """{contender: uint8 images -> probabilities (numpy)}."""
  # pylint: disable=g-import-not-at-top
  import functools
  import jax
  import onnxruntime
  import tensorflow as tf
  import distributed
  import export
  import inference
  import steps
  import workdir_files

  config = workdir_files.load_config(workdir)
  info = workdir_files.load_dataset_info(workdir)
  step = inference.resolve_step(workdir, 'best')
  state = inference.restore(workdir, config, step, info, distributed.Mesh())
  predict_step = jax.jit(functools.partial(
      steps.predict_step, use_ema=config.eval_with_ema,
      flip=config.eval_flip))

  def predict(images):
    return jax.nn.softmax(predict_step(state, images), axis=-1)

  with open(f'{export_dir}/{export.JAX_FILE}', 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  serving = tf.saved_model.load(
      f'{export_dir}/{export.SAVED_MODEL_DIR}').signatures['serving_default']
  session = onnxruntime.InferenceSession(
      f'{export_dir}/{export.ONNX_FILE}', providers=['CPUExecutionProvider'])
  return {
      'predict': predict,
      'jax.export': exported.call,
      'SavedModel': lambda x: serving(images=tf.constant(x))['probabilities'],
      'ONNX Runtime': lambda x: session.run(['probabilities'],
                                            {'images': x})[0],
  }


def lineup(args, scratch):
  """{(model, batch, contender): (Runner, batch)}, checking on the way that
  every contender gives predict's probabilities."""
  # pylint: disable=g-import-not-at-top
  import export
  import workdir_files

  runners = {}
  for name, (model, kwargs) in MODELS.items():
    workdir = f'{scratch}/{name}'
    common.run_or_exit(common.main_command(
        workdir, 'configs/fashion_mnist.py', args.data_dir,
        f'--config.model={model}', f'--config.num_train_steps={TRAIN_STEPS}',
        f'--config.log_every_steps={TRAIN_STEPS}',
        *(f'--config.model_kwargs.{k}={v}' for k, v in kwargs.items())))
    record, errors = export.export(workdir_files.load_config(workdir),
                                   workdir, export_dir=f'{workdir}/export')
    if errors:
      sys.exit(f'{name}: export failed: {errors}')
    fns = contender_fns(workdir, f'{workdir}/export')
    for batch in BATCHES:
      images = np.random.default_rng(batch).integers(
          0, 256, (batch, *record['image_size'], record['channels']),
          dtype=np.uint8)
      expected = np.asarray(fns['predict'](images))
      for contender, fn in fns.items():
        np.testing.assert_allclose(np.asarray(fn(images)), expected,
                                   atol=1e-5)
        runners[(name, batch, contender)] = (Runner(fn, images), batch)
  return runners


def measure_inference(args):
  """Times every model, batch and contender, alternating; the table (with
  --out, also OUT.md; with --json, every window)."""
  import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup(log=False)  # Before JAX's backends start, as main.py.
  import jax  # pylint: disable=g-import-not-at-top
  rates = {}
  with common.scratch_workdir('inference') as scratch:
    runners = lineup(args, scratch)
    for batch in BATCHES:
      # Window sizes per batch size: --window_images is for training.
      args_b = type(args)(**{**vars(args),
                             'window_images': WINDOW_IMAGES[batch],
                             'warmup_images': 2 * batch})
      rates.update(windows.alternate_windows(
          {k: v for k, v in runners.items() if k[1] == batch}, args_b))
  facts = {'backend': jax.default_backend(),
           'device': jax.devices()[0].device_kind,
           'device_count': jax.device_count()}
  common.report(report_lines(facts, rates, args), args.out)
  common.write_json(args.json, {' '.join(map(str, k)): r
                                for k, r in rates.items()})


def report_lines(facts, rates, args):
  """The machine and settings, the table, the command."""
  median = {key: statistics.median(r) for key, r in rates.items()}
  lines = [
      f'machine: {common.describe(facts)}, no GPU. Fashion-MNIST size '
      f'(28x28x1 uint8) in, probabilities out, float32; one fixed batch; '
      f'median of {args.windows} windows of {WINDOW_IMAGES[1]} images '
      f'(batch 1) or {WINDOW_IMAGES[64]} (batch 64), all contenders '
      f'alternating. Every contender\'s probabilities equal predict\'s '
      f'within 1e-5 on these batches.', '',
      '| model | batch | ' + ' | '.join(f'{c} images/s' for c in CONTENDERS)
      + ' | ' + ' | '.join(f'{c} vs predict' for c in CONTENDERS[1:]) + ' |',
      '| --- | ---: |' + ' ---: |' * (2 * len(CONTENDERS) - 1)]
  for name in MODELS:
    for batch in BATCHES:
      base = median[(name, batch, 'predict')]
      lines.append(
          f'| {name} | {batch} | ' +
          ' | '.join(f'{median[(name, batch, c)]:.0f}' for c in CONTENDERS) +
          ' | ' + ' | '.join(f'{median[(name, batch, c)] / base:.2f}x'
                             for c in CONTENDERS[1:]) + ' |')
  lines += ['', 'Each window, images/s:', '']
  for key, values in rates.items():
    lines.append(f'* {" ".join(map(str, key))}: '
                 f'{", ".join(f"{v:.0f}" for v in values)}')
  lines += ['', f'Command: `{shlex.join(["python", *sys.argv])}`.']
  return lines
