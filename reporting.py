"""What a run tells: progress lines, logged windows, epoch records, results.

The loop (train.py) calls these at its periodic points: `ReportProgress`
about once a minute, `log_train_window` every `log_every_steps`,
`end_epoch` after each evaluation, and `write_results` once at the end
(summary.json, metrics.png, predictions.png). `Progress` is the history and
time a checkpoint carries besides the state, so a resumed run reports the
same numbers as one never interrupted.
"""

import dataclasses
import functools
import os
import time
from typing import Optional

from absl import logging
from flax import linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

import data_sources
import distributed
import input_pipeline
import models
import runtime
import steps
import workdir_files

# Test images drawn in predictions.png.
NUM_PLOTTED_PREDICTIONS = 25


def runtime_facts() -> dict:
  """What decides a run's float rounding besides the config: the library
  versions, the backend and devices, and XLA's flags. Two sessions of a run
  under different facts are not bitwise one uninterrupted run."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
          'backend': jax.default_backend(), 'devices': len(devices),
          'device_kind': devices[0].device_kind,
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


@dataclasses.dataclass
class Progress:
  """What a checkpoint carries besides the state: the epoch history, the
  time spent, and the runtime of each session, over all sessions."""
  history: list
  train_seconds: float = 0.0
  earlier_wall_seconds: float = 0.0
  session_start: float = dataclasses.field(default_factory=time.time)
  # The runtime facts of the latest session, and each resume that ran
  # under other facts than the session before it.
  runtime: dict = dataclasses.field(
      default_factory=lambda: runtime_facts())  # pylint: disable=unnecessary-lambda
  runtime_changes: list = dataclasses.field(default_factory=list)
  # Where the first weights came from (warm_start.Source.record), or None.
  initialized_from: Optional[dict] = None
  # An import-path model's file and its SHA-256, or None.
  model_code: Optional[dict] = None

  @classmethod
  def from_meta(cls, meta: Optional[dict],
                step: Optional[int] = None) -> 'Progress':
    """The progress checkpoint `step` recorded, continued by this session: a
    change of runtime facts is logged and kept for summary.json."""
    if meta is None:
      return cls(history=[])
    progress = cls(history=meta['history'],
                   train_seconds=meta['elapsed']['train_seconds'],
                   earlier_wall_seconds=meta['elapsed']['wall_seconds'],
                   runtime_changes=list(meta.get('runtime_changes', [])),
                   initialized_from=meta.get('initialized_from'),
                   model_code=meta.get('model_code'))
    before = meta.get('runtime')  # Older checkpoints did not record it.
    if before is not None and before != progress.runtime:
      changed = {k: [before.get(k), v] for k, v in progress.runtime.items()
                 if before.get(k) != v}
      progress.runtime_changes.append({'resumed_at_step': step,
                                       'changed': changed})
      logging.warning(
          'Resuming under another runtime (%s): the results will not be '
          'bitwise those of an uninterrupted run', '; '.join(
              f'{k} {a!r} there vs {b!r} here' for k, (a, b) in
              changed.items()))
    return progress

  @property
  def wall_seconds(self) -> float:
    return self.earlier_wall_seconds + time.time() - self.session_start

  def meta(self, signature: dict, config: dict) -> dict:
    """The checkpoint's `meta` item: history, signature, config, time and
    runtime."""
    return {'history': self.history, 'signature': signature,
            'config': config, 'initialized_from': self.initialized_from,
            'model_code': self.model_code,
            'elapsed': {'train_seconds': self.train_seconds,
                        'wall_seconds': self.wall_seconds},
            'runtime': self.runtime, 'runtime_changes': self.runtime_changes}


def log_train_window(writer, state: steps.TrainState, step: int,
                     learning_rate: float, images_per_second: float,
                     mesh: distributed.Mesh) -> steps.TrainState:
  """Writes the metrics of the steps since the last log; starts a new
  window."""
  window = steps.to_float_dict(state.window_metrics)  # Syncs with the device.
  writer.write_scalars(step, {
      **{f'train_{k}': v for k, v in window.items()},
      'learning_rate': learning_rate,
      'images_per_second': images_per_second})
  return state.replace(window_metrics=mesh.put_replicated(
      type(state.window_metrics).empty()))


def end_epoch(writer, state: steps.TrainState, step: int,
              steps_per_epoch: int, evaluations: dict, history: list,
              mesh: distributed.Mesh) -> steps.TrainState:
  """Records the epoch's train metrics and `evaluations` ({split: metrics},
  e.g. validation and test); starts a new epoch accumulator at epoch
  boundaries."""
  # Step 0 (a run of no steps) has trained on nothing.
  train = steps.to_float_dict(state.epoch_metrics) if step else {}
  evaluated = {f'{split}_{k}': v for split, metrics in evaluations.items()
               for k, v in metrics.items()}
  record = {'epoch': step / steps_per_epoch, 'step': step,
            **{f'train_{k}': v for k, v in train.items()}, **evaluated}
  history.append(record)
  writer.write_scalars(step, {
      **{f'epoch_train_{k}': v for k, v in train.items()}, **evaluated},
                       log=False)  # The line below says it once.
  logging.info('epoch %.2f step %d: %s', record['epoch'], step, ', '.join(
      f'{k} {v:.4f}' for k, v in record.items() if k not in ('epoch',
                                                             'step')))
  if step % steps_per_epoch:
    # A run that ends mid-epoch keeps its partial accumulator, so that
    # extending it later (more steps) reports the same epochs.
    return state
  return state.replace(epoch_metrics=mesh.put_replicated(
      type(state.epoch_metrics).empty()))


def log_model(model: nn.Module, name: str, image_shape):
  """Logs the model's size in one line; at --verbosity=1, also a table of
  its layers, parameters and FLOPs (hundreds of lines for a ResNet)."""
  images = jnp.ones([1] + list(image_shape))
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          models.init_keys(jax.random.PRNGKey(0)), images)
  count = sum(int(np.prod(leaf.shape)) for leaf in
              jax.tree.leaves(shapes.get('params', {})))
  logging.info('Model %s: %s parameters (%.1f MB as float32)%s', name,
               f'{count:,}', count * 4 / 1e6,
               '' if logging.get_verbosity() >= 1 else
               '; --verbosity=1 logs a table of its layers')
  if name == 'cnn' and image_shape[0] > 32:
    logging.info('The CNN\'s first dense layer grows with the image area '
                 '(%s of its weights at %d px; about 51 M at 224 px); for '
                 'photos, a ResNet (model=resnet18, or resnet20 for small '
                 'images) learns more from fewer parameters',
                 f'{(image_shape[0] // 4) * (image_shape[1] // 4) * 64 * 256:,}',
                 image_shape[0])
  if logging.get_verbosity() >= 1:
    logging.info('Model %s:\n%s', name, nn.tabulate(
        model, jax.random.PRNGKey(0), compute_flops=True,
        compute_vjp_flops=True, console_kwargs={
            'force_terminal': False, 'force_jupyter': False, 'width': 100}
    )(images))


class ReportProgress:
  """About once a minute: logs steps/s, progress and the time left; then
  and at the last step writes steps_per_sec and uptime to TensorBoard.

  steps/s is the last minute's; the time left comes from the mean rate
  since this session's first step, evaluations and checkpoints included (a
  minute holding an epoch's evaluation would otherwise swing it by half).
  clu's periodic_actions.ReportProgress does this too, but importing it
  imports TensorFlow (through clu.metric_writers): seconds of start-up.
  """

  def __init__(self, total_steps: int, writer, every_seconds: float = 60.0):
    self._total, self._writer, self._every = total_steps, writer, every_seconds
    self._start = time.monotonic()
    self._last_step, self._last_time = None, self._start
    self._first_step, self._first_time = None, self._start

  def __call__(self, step: int):
    now = time.monotonic()
    if self._last_step is None:  # The first step of a session: compile time.
      self._last_step, self._last_time = step, now
      self._first_step, self._first_time = step, now
      return
    if step == self._last_step or (step != self._total
                                   and now - self._last_time < self._every):
      return
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    mean_rate = (step - self._first_step) / max(now - self._first_time, 1e-9)
    left = (self._total - step) / max(mean_rate, 1e-9)
    if step != self._total:  # At the end, the last line says it all.
      logging.info('%.1f steps/s, %.1f%% (%d/%d), %d min %02d s left', rate,
                   100 * step / self._total, step, self._total, left // 60,
                   left % 60)
    self._writer.write_scalars(step, {'steps_per_sec': rate,
                                      'uptime': now - self._start},
                               log=False)
    self._last_step, self._last_time = step, now


def write_results(workdir: str, dataset, progress: Progress,
                  state: steps.TrainState, mesh: distributed.Mesh, *,
                  total_steps: int, batch_size: int, eval_batch_size: int,
                  use_ema: bool, best_step: Optional[int],
                  config: dict, stop_reason: str = 'finished',
                  eval_flip: bool = False) -> dict:
  """Writes summary.json, metrics.png and predictions.png; returns summary.

  Args:
    workdir: the run's folder.
    dataset: the run's data_sources.Dataset.
    progress: the run's history and time.
    state: the final state.
    mesh: where the state is.
    total_steps: the run's length.
    batch_size: the training batch (for images/s).
    eval_batch_size: the eval batch (input_pipeline.fit_eval_batch_size).
    use_ema: predict with the EMA variables.
    best_step: the best checkpoint, as the checkpoint manager ranks it.
    config: the run's config, as a dict.
    stop_reason: 'finished', or 'early_stopping' for a run that stopped
      before its last step (write_stopped_summary: 'preempted',
      'diverged').
    eval_flip: predict on the mean logits of each image and its mirror.
  """
  summary = summary_of(progress, total_steps=total_steps,
                       batch_size=batch_size, best_step=best_step,
                       split=dataset.selection_split, config=config,
                       stop_reason=stop_reason)
  plotted = data_sources.Subset(dataset.test,
                                plotted_examples(len(dataset.test)))
  # One batch of them, padded to the device count as evaluation pads.
  batch = -(-len(plotted) // jax.device_count()) * jax.device_count()
  test_images, _, _ = next(input_pipeline.eval_batches(
      plotted, batch, jax.process_index(), jax.process_count()))
  predict = jax.jit(functools.partial(steps.predict_step, use_ema=use_ema,
                                      flip=eval_flip))
  logits = predict(state, *mesh.put_batch(test_images))
  logits = multihost_utils.process_allgather(logits, tiled=True)
  if jax.process_index() == 0:
    workdir_files.write_json(os.path.join(workdir, workdir_files.SUMMARY),
                             summary)
    import plots  # pylint: disable=g-import-not-at-top  # matplotlib: 1 s.
    plots.plot_history(progress.history,
                       os.path.join(workdir, workdir_files.METRICS_PLOT))
    images, labels = plotted.get(np.arange(len(plotted)))
    plots.plot_predictions(
        images, labels,
        np.asarray(logits[:len(plotted)]).argmax(-1), dataset.class_names,
        os.path.join(workdir, workdir_files.PREDICTIONS_PLOT))
  return summary


def write_stopped_summary(workdir: str, progress: Progress, *, step: int,
                          stop_reason: str, batch_size: int,
                          best_step: Optional[int], split: str, config: dict,
                          error: str = ''):
  """summary.json of a run stopped before its end (`stop_reason`
  'preempted' or 'diverged', at `step`): what it has so far, written at
  once, no plots; a rerun continues the run and replaces it."""
  if jax.process_index() != 0:
    return
  summary = summary_of(progress, total_steps=step, batch_size=batch_size,
                       best_step=best_step, split=split, config=config,
                       stop_reason=stop_reason)
  if error:
    summary['error'] = error
  workdir_files.write_json(os.path.join(workdir, workdir_files.SUMMARY),
                           summary)


def summary_of(progress: Progress, *, total_steps: int, batch_size: int,
               best_step: Optional[int], split: str, config: dict,
               stop_reason: str) -> dict:
  """summary.json's content: the last epoch's figures (none before the
  first), the best checkpoint's, times, history, config and runtime."""
  final = progress.history[-1] if progress.history else {'epoch': 0.0}
  best = next((h for h in progress.history if h['step'] == best_step),
              None)
  return {
      'final_step': total_steps, 'stop_reason': stop_reason,
      'epoch': final['epoch'],
      **{k: v for k, v in final.items()
         if k.startswith(('train_', 'validation_', 'test_'))},
      # The best checkpoint is chosen on the split `best_chosen_on`; its
      # test accuracy is best_test_accuracy either way.
      'best_chosen_on': split, 'best_step': best_step,
      'best_epoch': None if best is None else best['epoch'],
      **{f'best_{k}': None if best is None else best[k]
         for k in ('validation_accuracy', 'test_accuracy')
         if k in final},
      'wall_seconds': progress.wall_seconds,
      'train_seconds': progress.train_seconds,
      'train_images_per_second':
          total_steps * batch_size / max(progress.train_seconds, 1e-9),
      'history': progress.history, 'config': config,
      # What else shaped the numbers and the speed: versions, backend,
      # devices, XLA's flags, malloc's settings (runtime.py); and each
      # resume under other facts (then the run is not bitwise one run).
      'runtime': {**runtime_facts(),
                  'malloc': runtime.malloc_applied or 'unchanged'},
      'resumed_under_another_runtime': progress.runtime_changes,
      'initialized_from': progress.initialized_from,
      'model_code': progress.model_code,
  }


def plotted_examples(num_test: int) -> np.ndarray:
  """The test examples predictions.png shows: up to NUM_PLOTTED_PREDICTIONS
  spread evenly over the split, so that a split sorted by class (an image
  folder's) shows every class, not the first one or two."""
  count = min(NUM_PLOTTED_PREDICTIONS, num_test)
  return np.unique(np.linspace(0, num_test - 1, count).round().astype(
      np.int64))
