"""The training loop: train, evaluate each epoch, checkpoint, resume.

`train_and_evaluate(config, workdir)` is the entry point. It and the loop
(`_train`) read the config; the pieces they call take plain values: the
steps and the state (steps.py), the data (data_sources.py,
input_pipeline.py), checkpoints (checkpointing.py) and what the run reports
(reporting.py). Besides the loop, only the config's own rules
(config_rules.py) and the two adapters that turn its data and optimizer keys
into keyword arguments (`data_sources.dataset_options`,
`steps.optimizer_options`) read it.
"""

import contextlib
import os
import time
from typing import Optional

from absl import logging
import jax
import ml_collections
import numpy as np

import checkpointing
import config_rules
import controls
import data_sources
import distributed
import event_files
import faults
import imported_models
import input_pipeline
import models
import optimizers
import preemption
import reporting
import runtime
import steps
import trackers
import warm_start
import workdir_files


class DivergenceError(RuntimeError):
  """The loss, a gradient or a parameter became NaN or infinite at `step`."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Optional[dict]:
  """Trains, evaluates each epoch, checkpoints, resumes; writes results.

  Args:
    config: hyperparameters, see configs/default.py.
    workdir: where checkpoints, TensorBoard events, plots and summary go.

  Returns:
    The summary dict (also written to workdir/summary.json), or None if the
    run in workdir had already finished and its results are there.

  Raises:
    config_rules.ConfigError, data_sources.DataError,
      workdir_files.WorkdirError: bad config, data or workdir; nothing in
      workdir was changed.
    checkpointing.IncompatibleCheckpointError: workdir holds another run.
    workdir_files.WorkdirBusy: another trainer is using workdir.
    DivergenceError: the loss became NaN/inf; no such checkpoint was saved.
    preemption.Preempted: a signal stopped the run after saving a
      checkpoint.
  """
  # A model file's path made absolute, for config.json and the checkpoint.
  config.model = imported_models.canonical(config.model)
  config_rules.validate_config(config, jax.device_count(),
                               jax.process_count())
  config_rules.warn_unused(config)
  dataset = data_sources.load_dataset(
      **data_sources.dataset_options(config),
      processes=distributed.processes())
  steps_per_epoch, total_steps, warmup_steps = steps.compute_steps(
      len(dataset.train), config.batch_size, config.num_epochs,
      config.num_train_steps, config.warmup_epochs)
  config_rules.check_schedule(config.lr_schedule, config.warmup_epochs,
                              warmup_steps, total_steps)
  eval_batch_size = input_pipeline.fit_eval_batch_size(
      config.eval_batch_size, [len(s) for s in dataset.eval_splits().values()],
      jax.device_count())
  logging.info('Data: %s; %d train, %s%d test examples, images %s, %d '
               'classes', dataset.source, len(dataset.train),
               '' if dataset.validation is None else
               f'{len(dataset.validation)} validation, ', len(dataset.test),
               dataset.train.image_shape, dataset.num_classes)
  if dataset.validation is None:
    logging.warning('No validation split: the best checkpoint is chosen on '
                    'the test set (summary.json: best_chosen_on test); set '
                    'validation_fraction to choose it on held-out training '
                    'examples')
  model = models.create_model(config.model, dataset.num_classes,
                              **config.model_kwargs.to_dict())
  config_rules.check_model(config, model, dataset.train.image_shape,
                           dataset.num_classes)
  try:
    class_weights = controls.class_weights(
        config.class_weights, data_sources.labels_of(dataset.train),
        dataset.num_classes)
  except controls.ControlError as e:
    raise config_rules.ConfigError(str(e)) from None
  watched = config_rules.watched_metric(config, dataset.validation is not None)
  if (config.early_stopping_patience or config.lr_schedule == 'plateau') and (
      watched.startswith('test_')):
    logging.warning('Early stopping and the plateau schedule watch %s: '
                    'deciding on the test set is optimistic; set '
                    'validation_fraction to decide on held-out training '
                    'examples', watched)
  tx, lr_fn = steps.create_optimizer_and_schedule(
      total_steps=total_steps, warmup_steps=warmup_steps,
      **steps.optimizer_options(config))
  accum = config.grad_accum_steps
  fresh = _warm_start(config, workdir, model, tx, dataset)
  workdir_files.check_writable(workdir)

  def signature(state):
    return config_rules.resume_signature(state, config, dataset,
                                         total_steps // accum,
                                         warmup_steps // accum)

  with _lock(workdir):
    return _train(config, workdir, dataset, model, tx, lr_fn, signature,
                  steps_per_epoch, total_steps, eval_batch_size, fresh,
                  class_weights, watched)


def _warm_start(config, workdir, model, tx, dataset):
  """The fresh state with config.init_from's weights, and their source;
  None when the run starts from random weights or resumes (then init_from
  is not used again). Raises WarmStartError before anything is written."""
  if not config.init_from:
    return None
  if checkpointing.finished_steps(workdir_files.checkpoint_dir(workdir)):
    logging.info('init_from %r is not used again: the run resumes from its '
                 'own checkpoints', config.init_from)
    return None
  state = steps.create_train_state(model, tx, dataset.train.image_shape,
                                   config.seed, config.ema_decay > 0,
                                   config.normalize)
  variables, source = warm_start.load(
      config.init_from, config.model,
      {'params': state.params, **state.model_state}, config.init_exclude)
  logging.info('Initialised from %s', source.summary)
  info, warning = warm_start.preprocessing_advice(source, config)
  if info:
    logging.info(info)
  if warning:
    logging.warning(warning)
  return warm_start.start_from(state, variables, tx), source


def _check_model_code(name: str, progress, meta):
  """Records the SHA-256 of an import-path model's file in the progress
  (hence the checkpoint); says so when a resumed run's file has changed
  since its checkpoint (bitwise resume holds only for the same code)."""
  digest = imported_models.file_sha256(name)
  if not digest:
    return
  before = (meta or {}).get('model_code', {}).get('sha256')
  if before and before != digest:
    logging.warning('%s has changed since the checkpoint was written (its '
                    'SHA-256 was %s, now %s): the resumed run is not bitwise '
                    'an uninterrupted one', imported_models.resolve(name).file,
                    before[:12], digest[:12])
  progress.model_code = {'file': imported_models.resolve(name).file,
                         'sha256': digest}


def _lock(workdir: str):
  """Holds the workdir for this run (process 0 speaks for all processes)."""
  if jax.process_index() == 0:
    return workdir_files.hold_lock(workdir)
  return contextlib.nullcontext()


def _train(config, workdir, dataset, model, tx, lr_fn, signature_fn,
           steps_per_epoch, total_steps, eval_batch_size, fresh=None,
           class_weights=None, watched='test_accuracy'):
  """train_and_evaluate once the data is loaded and the workdir is held."""
  is_main = jax.process_index() == 0
  image_shape = list(dataset.train.image_shape)
  mesh = distributed.Mesh()
  checkpoint_dir = workdir_files.checkpoint_dir(workdir)
  state, meta, signature = restore_or_initialize(
      model, tx, image_shape, config.seed, config.ema_decay > 0, signature_fn,
      checkpoint_dir, mesh, fresh and fresh[0], config.normalize)
  start_step = int(state.step)
  progress = reporting.Progress.from_meta(meta, start_step)
  if meta is None and fresh:
    progress.initialized_from = fresh[1].record()
  _check_model_code(config.model, progress, meta)
  if meta is not None:
    logging.info('Resumed from step %d in %s', start_step, checkpoint_dir)
    config_rules.log_config_changes(meta.get('config', {}), config,
                                    start_step)
  manager = checkpointing.create_manager(checkpoint_dir,
                                         config.max_checkpoints_to_keep)

  def write_results(state, final_step, stop_reason='finished', tracked=None):
    summary = reporting.write_results(
        workdir, dataset, progress, state, mesh, total_steps=final_step,
        batch_size=config.batch_size, eval_batch_size=eval_batch_size,
        use_ema=config.eval_with_ema, best_step=manager.best_step(),
        config=config.to_dict(), stop_reason=stop_reason,
        eval_flip=config.eval_flip)
    if tracked is None:  # A run that trains nothing more has none open.
      tracked = _open_trackers(config, workdir, dataset)
    tracked.finish(summary)
    return summary

  def stops_early(history):
    return controls.should_stop(history, watched,
                                config.early_stopping_patience,
                                config.early_stopping_min_delta)

  if meta is not None and start_step < total_steps and stops_early(
      progress.history):
    epoch = progress.history[-1]['epoch']
    logging.info('Run in %s stopped early at epoch %.2f (step %d): %s has '
                 'not improved for %d epochs; nothing to train', workdir,
                 epoch, start_step, watched, config.early_stopping_patience)
    summary = None
    if not workdir_files.finished(workdir):
      summary = write_results(state, start_step, 'early_stopping')
    manager.close()
    return summary
  if start_step >= total_steps and (meta is not None or total_steps > 0):
    summary = None
    if workdir_files.finished(workdir):
      logging.info('Run in %s already finished at step %d of %d; nothing to '
                   'train. Results are in %s', workdir, start_step,
                   total_steps, os.path.join(workdir, workdir_files.SUMMARY))
    else:
      # Killed after its last checkpoint but before its results: everything
      # they need is in that checkpoint.
      logging.warning('Run in %s finished at step %d but has no '
                      'summary.json; writing its results from checkpoint %d',
                      workdir, start_step, start_step)
      summary = write_results(state, start_step)
    manager.close()
    return summary
  # Before anything in the workdir changes: a refusal here touches nothing.
  batches = input_pipeline.device_train_batches(
      dataset.train, config.batch_size, config.seed, start_step,
      total_steps - start_step, mesh,
      prefetch_batches=config.prefetch_batches,
      on_device=config.data_on_device,
      balanced_labels=data_sources.labels_of(dataset.train)
      if config.sampling == 'balanced' else None)
  if is_main:
    # Points logged after the restored step by a killed session go, so the
    # resumed session writes each (tag, step) exactly once.
    event_files.truncate_after(workdir, start_step if meta else -1)
    workdir_files.write_json(os.path.join(workdir, workdir_files.CONFIG),
                             config.to_dict())
    workdir_files.write_json(os.path.join(workdir, workdir_files.DATASET), {
        # An image folder's classes come from its folders, not a name.
        'dataset': None if data_sources.source_kind(config.data_dir) in (
            'folder', 'flat') else config.dataset, 'source': dataset.source,
        'image_shape': image_shape, 'num_classes': dataset.num_classes,
        'class_names': list(dataset.class_names)})
  tracked = _open_trackers(config, workdir, dataset)
  writer = event_files.SummaryWriter(workdir if is_main else None, tracked)
  if start_step == 0:
    writer.write_hparams(config.to_dict())

  train_step, eval_step = steps.jit_steps(
      mesh, label_smoothing=config.label_smoothing,
      ema_decay=config.ema_decay, use_ema=config.eval_with_ema,
      augment=config.augment, freeze=config.freeze,
      augment_kwargs=config.augment_kwargs.to_dict(),
      num_classes=dataset.num_classes, eval_flip=config.eval_flip,
      class_weights=class_weights,
      input_size=tuple(dataset.train.image_shape[:2]))
  report_progress = reporting.ReportProgress(total_steps, writer)
  logging.info('Training steps %d..%d (%d per epoch, batch %d on %d %s '
               'device%s); compiling the step first (seconds; tens of '
               'seconds for a ResNet on CPU)', start_step, total_steps,
               steps_per_epoch, config.batch_size, jax.device_count(),
               jax.default_backend(), 's' if jax.device_count() > 1 else '')
  wait_each_step = distributed.one_step_in_flight()
  early_stop = False
  window_start, window_steps = time.time(), 0

  def write_stopped(step, stop_reason, error):
    reporting.write_stopped_summary(
        workdir, progress, step=step, stop_reason=stop_reason,
        batch_size=config.batch_size, best_step=manager.best_step(),
        split=dataset.selection_split, config=config.to_dict(), error=error)

  with (tracked.finished_on_error(),
        preemption.PreemptionHandler() as stop_signal,
        _finish_saves_on_error(manager), _summary_on_stop(write_stopped)):
    if total_steps == 0:  # The initial (e.g. pretrained) state, as step 0.
      evaluations = {split: steps.evaluate(eval_step, state, data,
                                           eval_batch_size, mesh)
                     for split, data in dataset.eval_splits().items()}
      state = reporting.end_epoch(writer, state, 0, steps_per_epoch,
                                  evaluations, progress.history, mesh)
      save(manager, 0, state, progress.meta(signature, config.to_dict()),
           writer, checkpoint_dir, {f'{split}_accuracy': m['accuracy']
                                    for split, m in evaluations.items()})
    for step in range(start_step, total_steps):
      state = train_step(state, *next(batches))
      if wait_each_step or step == start_step:
        jax.block_until_ready(state)
      if step == start_step:  # Compile time shows up here, once.
        logging.info('First training step done (compiled in %.1f s), %.2f s '
                     'after process start', time.time() - window_start,
                     runtime.process_age_seconds())
        if step == 0:  # After the step: tabulating costs time, not results.
          reporting.log_model(model, config.model, image_shape)
      done, window_steps = step + 1, window_steps + 1
      faults.trigger('step', done)
      report_progress(done)
      is_last = done == total_steps
      epoch_end = done % steps_per_epoch == 0 or is_last
      log_now = done % config.log_every_steps == 0 or epoch_end

      if log_now:
        check_finite(state, checkpoint_dir)
        seconds = time.time() - window_start
        progress.train_seconds += seconds
        learning_rate = float(lr_fn(step))
        if config.lr_schedule == 'plateau':
          learning_rate *= float(optimizers.plateau_factor(state.opt_state))
        state = reporting.log_train_window(
            writer, state, done, learning_rate,
            window_steps * config.batch_size / seconds, mesh)
        faults.trigger('log', done)
      if epoch_end:
        evaluations = {split: steps.evaluate(eval_step, state, data,
                                             eval_batch_size, mesh)
                       for split, data in dataset.eval_splits().items()}
        state = reporting.end_epoch(writer, state, done, steps_per_epoch,
                                    evaluations, progress.history, mesh)
        if config.lr_schedule == 'plateau':
          state = _cut_on_plateau(state, progress.history, watched, config,
                                  mesh)
      early_stop = epoch_end and not is_last and stops_early(
          progress.history)
      stop = stop_signal.requested(every_step=not log_now)
      if stop and not log_now:  # The partial window's time is kept too.
        progress.train_seconds += time.time() - window_start
        window_start, window_steps = time.time(), 0
      # Every evaluated state is saved with its score, so the best one can
      # be kept (checkpointing.create_manager) and restored exactly.
      if epoch_end or done % config.checkpoint_every_steps == 0 or stop:
        save(manager, done, state, progress.meta(signature,
                                                 config.to_dict()), writer,
             checkpoint_dir, {f'{split}_accuracy': metrics['accuracy']
                              for split, metrics in evaluations.items()}
             if epoch_end else None)
      if epoch_end and is_main:
        workdir_files.write_json(
            os.path.join(workdir, workdir_files.HISTORY), progress.history)
      if early_stop:
        logging.info('stopped early at epoch %.2f (step %d): %s has not '
                     'improved by more than %g for %d epochs',
                     done / steps_per_epoch, done, watched,
                     config.early_stopping_min_delta,
                     config.early_stopping_patience)
        total_steps = done
        break
      if stop and not is_last:
        checkpointing.wait(manager)
        writer.close()
        raise preemption.Preempted(
            f'stopped by {stop_signal.signal_name} at step {done} of '
            f'{total_steps}; checkpoint saved in {checkpoint_dir}. Run the '
            f'same command again to continue', step=done)
      if log_now:
        window_start, window_steps = time.time(), 0
    checkpointing.wait(manager)

  faults.trigger('results', total_steps)
  summary = write_results(state, total_steps,
                          'early_stopping' if early_stop else 'finished',
                          tracked)
  manager.close()
  writer.close()
  logging.info('Done: %s; last step %d: test accuracy %.4f; %.1f s wall, '
               '%.0f train images/s. Summary: %s', _best_line(summary),
               total_steps, summary['test_accuracy'], summary['wall_seconds'],
               summary['train_images_per_second'],
               os.path.join(workdir, workdir_files.SUMMARY))
  return summary


def _open_trackers(config, workdir, dataset) -> trackers.Trackers:
  """The run's experiment trackers; none on processes other than 0, which
  write no TensorBoard events either."""
  names = trackers.parse_trackers(config.trackers)
  if not names or jax.process_index() != 0:
    return trackers.Trackers()
  folder = data_sources.source_kind(config.data_dir) in ('folder', 'flat')
  return trackers.open_trackers(
      names, workdir,
      project=config.tracker_project, config=config.to_dict(),
      tags={'model': config.model,
            'dataset': os.path.basename(os.path.abspath(config.data_dir))
                       if folder else config.dataset,
            'data_source': dataset.source})


def _cut_on_plateau(state, history, watched, config, mesh):
  """The state with the plateau schedule's factor for `history`, logged
  when it changes."""
  cuts = controls.plateau_reductions(history, watched,
                                     config.plateau_patience,
                                     config.plateau_min_delta)
  factor = np.float32(config.plateau_factor) ** cuts
  if factor != float(optimizers.plateau_factor(state.opt_state)):
    logging.info('No improvement of %s for %d epochs: learning rate cut to '
                 '%g', watched, config.plateau_patience,
                 config.learning_rate * factor)
  return state.replace(opt_state=optimizers.set_plateau_factor(
      state.opt_state, mesh.put_replicated(np.asarray(factor, np.float32))))


def _best_line(summary: dict) -> str:
  """The best checkpoint in words, for the final log line."""
  if summary['best_step'] is None:
    return 'no best checkpoint kept'
  scores = ', '.join(f'{split} accuracy {summary[f"best_{split}_accuracy"]:.4f}'
                     for split in ('validation', 'test')
                     if summary.get(f'best_{split}_accuracy') is not None)
  return (f'best checkpoint step {summary["best_step"]} (epoch '
          f'{summary["best_epoch"]:.2f}, chosen on '
          f'{summary["best_chosen_on"]}): {scores}')


def restore_or_initialize(model, tx, image_shape, seed: int, ema: bool,
                          wanted_fn, checkpoint_dir: str,
                          mesh: distributed.Mesh, fresh=None,
                          normalize: str = 'none'):
  """The newest restorable checkpoint, or a fresh state.

  Args:
    model, tx, image_shape, seed, ema, normalize: as
      steps.create_train_state.
    wanted_fn: state -> the config's signature
      (config_rules.resume_signature).
    checkpoint_dir: the run's `checkpoints/` folder.
    mesh: where the state goes.
    fresh: the state to start from without a checkpoint (warm_start's);
      None: a random one from `seed`.

  Returns:
    (state on the mesh, the checkpoint's meta or None, the signature).
  """
  state = fresh if fresh is not None else steps.create_train_state(
      model, tx, image_shape, seed, ema, normalize)
  wanted = wanted_fn(state)
  target = jax.tree.map(np.asarray, state)
  restored = checkpointing.restore_latest(checkpoint_dir, target, wanted)
  if restored is None:
    return mesh.put_replicated(state), None, wanted
  restored_state, meta = restored
  return mesh.put_replicated(restored_state), meta, wanted


def check_finite(state: steps.TrainState, checkpoint_dir: str):
  """Raises DivergenceError if a step so far was not finite (a host sync)."""
  bad = int(state.nonfinite_step)
  if bad >= 0:
    kept = checkpointing.finished_steps(checkpoint_dir)
    raise DivergenceError(
        f'loss or gradients are not finite at step {bad}; stopped without '
        f'saving it. Latest good checkpoint: '
        f'{f"step {kept[-1]}" if kept else "none"}. Try a lower '
        f'learning_rate', step=bad)


def save(manager, step: int, state: steps.TrainState, meta: dict, writer,
         checkpoint_dir: str, scores: Optional[dict] = None):
  """Starts writing checkpoint `step`, never of a diverged state.

  `scores` ({'test_accuracy': ..., 'validation_accuracy': ...}) go with a
  checkpoint of an evaluated state; checkpointing keeps the best one.
  """
  check_finite(state, checkpoint_dir)
  writer.flush()  # Points up to `step` are on disk before its checkpoint.
  checkpointing.save(manager, step, state, meta, scores)
  faults.trigger('checkpoint', step)


@contextlib.contextmanager
def _summary_on_stop(write_stopped):
  """A run preempted or diverged leaves a summary.json saying so
  (stop_reason 'preempted' or 'diverged', its figures so far), then the
  error goes on; a rerun continues the run and replaces it."""
  try:
    yield
  except preemption.Preempted as e:
    if e.step is not None:
      write_stopped(e.step, 'preempted', '')
    raise
  except DivergenceError as e:
    write_stopped(e.step, 'diverged', str(e))
    raise


@contextlib.contextmanager
def _finish_saves_on_error(manager):
  """On any error (a preemption included), lets a checkpoint write in flight
  complete, then closes the manager, before the error goes on."""
  try:
    yield
  except BaseException:
    try:
      manager.wait_until_finished()
      manager.close()
    except Exception:  # pylint: disable=broad-except
      logging.exception('Pending checkpoint write failed')
    raise
