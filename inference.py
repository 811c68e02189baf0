"""Using a trained model: score a checkpoint, classify image files.

`evaluate_checkpoint` restores a checkpoint of a workdir and evaluates a
split with training's eval function (steps.evaluate) in the batches training
used (input_pipeline.fit_eval_batch_size over the same splits), so with the
run's own config its metrics for a checkpoint equal those the run recorded;
it adds a per-class table and a confusion matrix. `predict_files` classifies
PNG/JPEG files of any size after converting them like the training data.
Neither imports the training loop.
"""

import functools
import os
from typing import Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import checkpointing
import config_rules
import data_sources
import distributed
import image_folder
import input_pipeline
import imported_models
import models
import steps
import workdir_files


class InferenceError(ValueError):
  """A workdir or checkpoint that cannot be used; the message says why."""


def resolve_step(workdir: str, checkpoint: str) -> int:
  """'latest', 'best' or a step number -> an existing checkpoint step."""
  directory = workdir_files.checkpoint_dir(workdir)
  steps_kept = checkpointing.finished_steps(directory)
  if not steps_kept:
    raise InferenceError(f'no checkpoints in {directory}')
  if checkpoint == 'latest':
    return steps_kept[-1]
  if checkpoint == 'best':
    best = checkpointing.find_best_step(directory)
    if best is None:
      raise InferenceError(f'no checkpoint in {directory} was saved after an '
                           f'evaluation, so none is best yet; use '
                           f'--checkpoint=latest')
    logging.info('checkpoint best (step %d)', best)
    return best
  if not checkpoint.isdigit() or int(checkpoint) not in steps_kept:
    raise InferenceError(f'--checkpoint={checkpoint!r}: accepted are latest, '
                         f'best or one of the steps {steps_kept}')
  return int(checkpoint)


def restore(workdir: str, config: ml_collections.ConfigDict, step: int,
            info: dict, mesh: distributed.Mesh):
  """Restores the TrainState of checkpoint `step`."""
  image_shape = list(info['image_shape'])
  try:
    model = models.create_model(config.model, info['num_classes'],
                                **config.model_kwargs.to_dict())
  except imported_models.ModelError as e:
    raise InferenceError(f'the model of {workdir} (config.json) is no longer '
                         f'importable here: {e}') from None
  if imported_models.is_import_path(config.model):
    logging.info('Model %s imported again from %s', config.model,
                 imported_models.resolve(config.model).file)
  # Only the optimizer state's structure matters here (it is restored, not
  # used): build it as training did.
  tx, _ = steps.create_optimizer_and_schedule(
      total_steps=1, warmup_steps=0, **steps.optimizer_options(config))
  state = steps.create_train_state(model, tx, image_shape, config.seed,
                                   config.ema_decay > 0, config.normalize)
  wanted = checkpointing.signature(
      state, model=config.model, image_shape=image_shape,
      num_classes=info['num_classes'])
  directory = workdir_files.checkpoint_dir(workdir)
  try:
    state, _ = checkpointing.restore_step(
        directory, step, jax.tree.map(np.asarray, state), wanted)
  except checkpointing.IncompatibleCheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise InferenceError(f'checkpoint {step} in {directory} cannot be '
                         f'restored: {type(e).__name__}: '
                         f'{str(e).splitlines()[0][:200]}') from e
  return mesh.put_replicated(state)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        checkpoint: str = 'best',
                        split: str = 'test', eval_dir: str = '') -> dict:
  """Evaluates a checkpoint on a split; writes eval.json and confusion.png.

  Args:
    config: the run's config (workdir_files.load_config); data keys may
      differ.
    workdir: the training workdir.
    checkpoint: 'latest', 'best' or a step.
    split: 'test', or 'validation' for runs that have one.
    eval_dir: instead of the run's data, every image of FOLDER/<class>/...
      (class names among the run's), prepared as eval prepares images.

  Returns:
    The report also written to workdir/eval.json.
  """
  config_rules.validate_config(config, jax.device_count(),
                               jax.process_count(), training=False)
  info = workdir_files.load_dataset_info(workdir)
  step = resolve_step(workdir, checkpoint)
  if eval_dir:
    data, split = labelled_folder(eval_dir, info, config), eval_dir
    sizes = [len(data)]
  else:
    data, sizes = _run_split(config, info, split)
  mesh = distributed.Mesh()
  state = restore(workdir, config, step, info, mesh)
  batch_size = input_pipeline.fit_eval_batch_size(
      config.eval_batch_size, sizes, jax.device_count())
  eval_fn = jax.jit(functools.partial(steps.eval_and_predict_step,
                                      use_ema=config.eval_with_ema,
                                      flip=config.eval_flip),
                    out_shardings=mesh.replicated)
  predictions, labels = [], []
  metrics = steps.evaluate(  # One pass: the metrics and each prediction.
      eval_fn, state, data, batch_size, mesh,
      on_batch=lambda p, l: (predictions.append(np.asarray(p)),
                             labels.append(np.asarray(l))))
  predictions = np.concatenate(predictions)[:len(data)]
  labels = np.concatenate(labels)[:len(data)]
  n = info['num_classes']
  confusion = np.zeros((n, n), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  names = info['class_names']
  per_class = {names[c]: {
      'accuracy': float(confusion[c, c] / max(1, confusion[c].sum())),
      'examples': int(confusion[c].sum())} for c in range(n)}
  report = {'checkpoint_step': step, 'checkpoint': checkpoint,
            'split': split, 'examples': int(len(labels)), **metrics,
            'per_class': per_class, 'class_names': names,
            'confusion_matrix': confusion.tolist()}
  if jax.process_index() == 0:
    workdir_files.write_json(os.path.join(workdir, workdir_files.EVAL),
                             report)
    import plots  # pylint: disable=g-import-not-at-top  # matplotlib: 1 s.
    plots.plot_confusion(confusion, names,
                         os.path.join(workdir, workdir_files.CONFUSION_PLOT))
  return report


def _run_split(config, info, split):
  """(the run's split `split`, the sizes of all its eval splits)."""
  dataset = data_sources.load_dataset(
      **data_sources.dataset_options(config),
      processes=distributed.processes())
  if list(dataset.test.image_shape) != list(info['image_shape']):
    raise InferenceError(
        f'the data as configured gives images of shape '
        f'{list(dataset.test.image_shape)}, but the model was trained on '
        f'{info["image_shape"]}; accepted: the run\'s image_size and '
        f'channels (leave them out of the overrides)')
  splits = dataset.eval_splits()
  data = splits.get(split)
  if data is None:
    raise InferenceError(f'--split={split!r}: this run has the splits '
                         f'{", ".join(splits)}')
  return data, [len(s) for s in splits.values()]


def labelled_folder(eval_dir: str, info: dict, config):
  """Every image of eval_dir/<class>/... as a split labelled by the run's
  class names; InferenceError for a class the run does not have or a
  folder with no image."""
  if not os.path.isdir(eval_dir):
    raise InferenceError(f'--eval_dir={eval_dir} is not a folder; accepted: '
                         f'a folder of class folders, FOLDER/<class>/...')
  names = list(info['class_names'])
  found = [e.name for e in sorted(os.scandir(eval_dir), key=lambda e: e.name)
           if e.is_dir() and not e.name.startswith('.')]
  unknown = [name for name in found if name not in names]
  if unknown or not found:
    raise InferenceError(
        f'--eval_dir={eval_dir}: class folders {unknown or found} are not '
        f'among the run\'s classes; accepted: folders named {names}')
  paths, labels = [], []
  for name in found:
    for path in expand_paths([os.path.join(eval_dir, name)]):
      paths.append(os.fsencode(path))
      labels.append(names.index(name))
  if not paths:
    raise InferenceError(f'--eval_dir={eval_dir} holds no image files in its '
                         f'class folders {found}')
  return image_folder.FolderSplit(
      paths=np.asarray(paths), labels=np.asarray(labels, np.int32),
      image_shape=tuple(info['image_shape']), root=eval_dir,
      crop_pct=config.eval_crop_pct, interpolation=config.interpolation)


def format_report(report: dict) -> str:
  lines = [f'checkpoint {report["checkpoint_step"]} on {report["examples"]} '
           f'{report["split"]} examples: loss {report["loss"]:.4f}, accuracy '
           f'{report["accuracy"]:.4f}', 'per-class accuracy:']
  for name, row in report['per_class'].items():
    lines.append(f'  {name:<14} {row["accuracy"]:.4f}  ({row["examples"]})')
  return '\n'.join(lines)


def load_image(path: str, image_shape: Sequence[int], crop_pct: float = 1.0,
               interpolation: str = 'bilinear') -> np.ndarray:
  """An image file -> uint8 (H, W, C), converted as training data from an
  image folder is (image_folder.decode_image); the predict step scales it
  to [0, 1] as the train and eval steps do.

  Raises:
    ValueError: the file is empty, not an image, or over
      image_folder.MAX_IMAGE_PIXELS.
  """
  return image_folder.decode_image(path, *image_shape, crop_pct,
                                   interpolation)


# Files decoded and classified at a time: memory stays bounded whatever
# the number of files.
PREDICT_BATCH = 64


def expand_paths(paths: Sequence[str]) -> list[str]:
  """Files as given; folders by their image files, recursively, sorted
  (image_folder.IMAGE_EXTENSIONS, in any case)."""
  out = []
  for path in paths:
    if not os.path.isdir(path):
      out.append(path)
      continue
    for root, dirs, names in os.walk(path, followlinks=True):
      dirs.sort()
      out.extend(os.path.join(root, name) for name in sorted(names)
                 if name.lower().endswith(image_folder.IMAGE_EXTENSIONS))
  return out


def check_predict_args(top_k: int, num_classes: int, output: str):
  """InferenceError for a --top_k out of [1, classes] or an --output in a
  missing folder."""
  if not 1 <= top_k <= num_classes:
    raise InferenceError(f'--top_k={top_k}: accepted: 1 to the run\'s '
                         f'{num_classes} classes')
  folder = os.path.dirname(os.path.abspath(output)) if output else ''
  if output and (not os.path.isdir(folder) or os.path.isdir(output)):
    raise InferenceError(f'--output={output}: accepted: a file in an '
                         f'existing folder')


def predict_files(config: ml_collections.ConfigDict, workdir: str,
                  paths: Sequence[str], checkpoint: str = 'best',
                  top_k: int = 3, output: str = ''
                  ) -> tuple[list[str], list[str]]:
  """Classifies image files and folders of them, PREDICT_BATCH at a time.

  Returns (one line per file, the paths that could not be read). With
  `output`, also writes a CSV: path, then class_i,prob_i for the top_k
  classes, then error (empty for a file that was read), one row per file.
  """
  config_rules.validate_config(config, jax.device_count(),
                               jax.process_count(), training=False)
  info = workdir_files.load_dataset_info(workdir)
  check_predict_args(top_k, info['num_classes'], output)
  step = resolve_step(workdir, checkpoint)
  paths = expand_paths(paths)
  if not paths:
    raise InferenceError('no image files to predict; accepted: image files '
                         'or folders holding them')
  state, predict = None, None
  names = info['class_names']
  lines, failed, rows = [], [], []
  for first in range(0, len(paths), PREDICT_BATCH):
    images, ok_paths, results = [], [], {}
    for path in paths[first:first + PREDICT_BATCH]:
      try:
        images.append(load_image(path, info['image_shape'],
                                 config.eval_crop_pct, config.interpolation))
        ok_paths.append(path)
      except Exception as e:  # pylint: disable=broad-except
        # PIL raises many types for unreadable or non-image files.
        failed.append(path)
        detail = image_folder.first_line(e, 120)
        results[path] = (None, f'cannot read image ({detail}); accepted: '
                         f'PNG, JPEG, GIF and other formats PIL reads, up '
                         f'to {image_folder.MAX_IMAGE_PIXELS:,} pixels')
    if images:
      if state is None:
        mesh = distributed.Mesh()
        state = restore(workdir, config, step, info, mesh)
        predict = jax.jit(functools.partial(
            steps.predict_step, use_ema=config.eval_with_ema,
            flip=config.eval_flip))
      logits = predict(state, jnp.asarray(np.stack(images)))
      probs = np.asarray(jax.nn.softmax(logits, axis=-1))
      for path, p in zip(ok_paths, probs):
        top = np.argsort(-p, kind='stable')[:top_k]
        results[path] = ([(names[c], float(p[c])) for c in top], '')
    for path in paths[first:first + PREDICT_BATCH]:
      top, error = results[path]
      lines.append(f'{path}: error: {error}' if error else f'{path}: ' +
                   ', '.join(f'{name} {p:.3f}' for name, p in top))
      rows.append([path] + (sum(([name, f'{p:.6g}'] for name, p in top), [])
                            if top else [''] * (2 * top_k)) + [error])
  if output:
    _write_csv(output, top_k, rows)
  logging.info('Predicted %d files with checkpoint %d of %s%s', len(paths),
               step, workdir, f'; rows in {output}' if output else '')
  return lines, failed


def _write_csv(output: str, top_k: int, rows: list):
  import csv  # pylint: disable=g-import-not-at-top
  header = ['path'] + sum(([f'class_{i}', f'prob_{i}']
                           for i in range(1, top_k + 1)), []) + ['error']
  with workdir_files.replaced(output, newline='') as f:
    writer = csv.writer(f)  # Never half a file under its name.
    writer.writerow(header)
    writer.writerows(rows)
