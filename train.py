"""Training and evaluation loop: state, jitted steps, metrics, checkpoints.

`train_and_evaluate(config, workdir)` is the entry point. It reads the config
once at the top; everything it calls takes plain arguments.
"""

import contextlib
import json
import math
import os
import time
from typing import Any, Optional

from absl import logging
from clu import metric_writers
from clu import metrics
from clu import periodic_actions
import flax
from flax import linen as nn
from flax.training import train_state
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import psutil

import checkpointing
import event_files
import faults
import input_pipeline
import models
import plots
import preemption
import workdir_lock

OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw')
LR_SCHEDULES = ('constant', 'cosine', 'warmup_cosine')

EXIT_PREEMPTED = preemption.EXIT_PREEMPTED
Preempted = preemption.Preempted

# Config keys that may differ between a checkpoint and the run resuming from
# it, and what the change means; the README lists the same. Keys that must not
# differ are in `resume_signature`.
RESUME_CHANGES = {
    'learning_rate': 'steps after the checkpoint use the new value',
    'momentum': 'steps after the checkpoint use the new value',
    'weight_decay': 'steps after the checkpoint use the new value',
    'num_epochs': 'the run now ends at another step',
    'num_train_steps': 'the run now ends at another step',
    'eval_batch_size': 'test metrics may differ in the last float digits '
                       '(another summation order)',
    'data_dir': 'the same examples (checked) are read from another place',
    'dataset': 'the same examples and class names (checked)',
}


class ConfigError(ValueError):
  """A config value that cannot be used; the message names it."""


class DivergenceError(RuntimeError):
  """The loss became NaN or infinite."""


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Accuracy


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Accuracy


class TrainState(train_state.TrainState):
  """Everything a restart needs, as one pytree.

  Besides step, params and optimizer state: the RNG key, and the metric
  accumulators of the current epoch and of the current logging window, so a
  run resumed mid-epoch reports the same numbers as one never interrupted.
  """
  rng: jax.Array
  epoch_metrics: TrainMetrics
  window_metrics: TrainMetrics
  # First step (counting from 1) whose loss, gradients or new parameters were
  # not finite; -1 if none. Kept on the device so that divergence costs no
  # per-step host sync.
  nonfinite_step: jax.Array


def compute_steps(num_train_examples: int, batch_size: int, num_epochs: int,
                  num_train_steps: int, warmup_epochs: float):
  """Turns durations into steps; the only place that does.

  Returns:
    (steps_per_epoch, total_steps, warmup_steps).
  """
  per_epoch = input_pipeline.steps_per_epoch(num_train_examples, batch_size)
  if per_epoch == 0:
    raise ConfigError(f'batch_size {batch_size} is larger than the training '
                      f'set ({num_train_examples} examples)')
  total = num_train_steps if num_train_steps > 0 else num_epochs * per_epoch
  warmup = int(round(warmup_epochs * per_epoch))
  return per_epoch, total, warmup


def create_learning_rate_fn(schedule: str, base_lr: float, total_steps: int,
                            warmup_steps: int) -> optax.Schedule:
  """Returns step -> learning rate for one of LR_SCHEDULES."""
  if schedule == 'constant':
    return optax.constant_schedule(base_lr)
  if schedule == 'cosine':
    return optax.cosine_decay_schedule(base_lr, decay_steps=total_steps)
  if schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=base_lr, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1))
  raise ConfigError(f'unknown lr_schedule {schedule!r}; accepted: '
                    f'{", ".join(LR_SCHEDULES)}')


def create_optimizer(name: str, learning_rate: optax.ScalarOrSchedule,
                     momentum: float, weight_decay: float
                     ) -> optax.GradientTransformation:
  """Returns the optax optimizer `name` (one of OPTIMIZERS)."""
  if name == 'sgd':
    return optax.sgd(learning_rate, momentum=momentum or None)
  if name == 'momentum':
    if momentum <= 0:
      raise ConfigError(f'optimizer momentum needs momentum > 0, got '
                        f'{momentum}')
    return optax.sgd(learning_rate, momentum=momentum)
  if name == 'adam':
    return optax.adam(learning_rate)
  if name == 'adamw':
    return optax.adamw(learning_rate, weight_decay=weight_decay)
  raise ConfigError(f'unknown optimizer {name!r}; accepted: '
                    f'{", ".join(OPTIMIZERS)}')


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       image_shape, seed: int) -> TrainState:
  """Initialises parameters and optimizer state, deterministically in seed."""
  init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  dummy = jnp.ones((1,) + tuple(image_shape))
  # One compiled program instead of dozens of op-by-op dispatches (each
  # compiled on first use): seconds off every start.
  params = jax.jit(lambda key: model.init(key, dummy)['params'])(init_rng)
  state = TrainState.create(
      apply_fn=model.apply, params=params, tx=tx, rng=rng,
      epoch_metrics=TrainMetrics.empty(), window_metrics=TrainMetrics.empty(),
      nonfinite_step=jnp.array(-1, jnp.int32))
  return state.replace(step=jnp.zeros((), jnp.int32))


def train_step(state: TrainState, images, labels) -> TrainState:
  """One SGD step; loss and accuracy come from the same forward pass."""
  # state.rng is kept for models with dropout (fold_in(rng, step) per step)
  # so they resume exactly; the CNN draws no randomness.
  def loss_fn(params):
    logits = state.apply_fn({'params': params}, images)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return losses.mean(), (losses, logits)

  grads, (losses, logits) = jax.grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads)
  finite = jnp.isfinite(losses.mean()) & all_finite(grads) & all_finite(
      state.params)
  nonfinite_step = jnp.where((state.nonfinite_step < 0) & ~finite, state.step,
                             state.nonfinite_step)
  step_metrics = TrainMetrics.single_from_model_output(
      loss=losses, logits=logits, labels=labels)
  return state.replace(
      epoch_metrics=state.epoch_metrics.merge(step_metrics),
      window_metrics=state.window_metrics.merge(step_metrics),
      nonfinite_step=nonfinite_step)


def all_finite(tree) -> jax.Array:
  """True if no leaf of `tree` holds a NaN or an infinity (one reduction)."""
  return jnp.all(jnp.stack([jnp.isfinite(x).all()
                            for x in jax.tree.leaves(tree)]))


def eval_step(state: TrainState, images, labels, mask) -> EvalMetrics:
  logits = state.apply_fn({'params': state.params}, images)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return EvalMetrics.single_from_model_output(
      loss=losses, logits=logits, labels=labels, mask=mask)


def predict_step(state: TrainState, images):
  return state.apply_fn({'params': state.params}, images)


class Mesh:
  """Places host data and state on all devices: batch split, state copied."""

  def __init__(self):
    self.mesh = jax.make_mesh((jax.device_count(),), ('data',))
    self.batch = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec('data'))
    self.replicated = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec())

  def put_batch(self, *arrays):
    """Process-local numpy arrays -> global arrays split along axis 0."""
    return tuple(jax.make_array_from_process_local_data(self.batch, a)
                 for a in arrays)

  def put_replicated(self, tree):
    return jax.device_put(tree, self.replicated)


def jit_steps(mesh: Mesh):
  """The jitted (train_step, eval_step) every caller uses.

  The state is donated to the train step. Outputs are pinned replicated, so
  the state keeps one sharding and metrics can be read on every process.
  """
  return (jax.jit(train_step, donate_argnums=0, out_shardings=mesh.replicated),
          jax.jit(eval_step, out_shardings=mesh.replicated))


def one_step_in_flight() -> bool:
  """Whether to wait for each step before dispatching the next.

  Several CPU devices in one process (XLA_FLAGS=--xla_force_host_platform_
  device_count=N) share one small thread pool; with many steps queued, their
  all-reduces were seen to deadlock on a 2-core machine. GPUs and a single
  CPU device keep JAX's asynchronous dispatch.
  """
  return jax.default_backend() == 'cpu' and jax.local_device_count() > 1


def evaluate(eval_fn, state, split, batch_size, mesh: Mesh) -> dict:
  """Mean loss and accuracy over every example of `split`, exactly once."""
  total = None
  wait = one_step_in_flight()
  for images, labels, mask in input_pipeline.eval_batches(
      split, batch_size, jax.process_index(), jax.process_count()):
    batch_metrics = eval_fn(state, *mesh.put_batch(images, labels, mask))
    if wait:
      jax.block_until_ready(batch_metrics)
    total = batch_metrics if total is None else total.merge(batch_metrics)
    if faults.enabled():  # Test hook; reading the step syncs.
      faults.trigger('eval', int(state.step))
  return _to_float_dict(total)


def _to_float_dict(collection: metrics.Collection) -> dict:
  return {k: float(v) for k, v in collection.compute().items()}


def validate_config(config: ml_collections.ConfigDict, device_count: int):
  """Checks values train_and_evaluate cannot fix later; raises ConfigError."""
  for key, value in config.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f'{key} must be a finite number, got {value!r}')
  for key in ('learning_rate', 'batch_size', 'eval_batch_size', 'num_epochs',
              'log_every_steps', 'checkpoint_every_steps',
              'max_checkpoints_to_keep'):
    if not config[key] > 0:
      raise ConfigError(f'{key} must be > 0, got {config[key]!r}')
  for key in ('momentum', 'weight_decay', 'warmup_epochs'):
    if not config[key] >= 0:
      raise ConfigError(f'{key} must be >= 0, got {config[key]!r}')
  if config.num_train_steps == 0 or config.num_train_steps < -1:
    raise ConfigError(f'num_train_steps must be -1 (derive from num_epochs) '
                      f'or > 0, got {config.num_train_steps}')
  if config.optimizer not in OPTIMIZERS:
    raise ConfigError(f'unknown optimizer {config.optimizer!r}; accepted: '
                      f'{", ".join(OPTIMIZERS)}')
  if config.lr_schedule not in LR_SCHEDULES:
    raise ConfigError(f'unknown lr_schedule {config.lr_schedule!r}; '
                      f'accepted: {", ".join(LR_SCHEDULES)}')
  if config.model not in models.MODELS:
    raise ConfigError(f'unknown model {config.model!r}; accepted: '
                      f'{", ".join(sorted(models.MODELS))}')
  for key in ('batch_size', 'eval_batch_size'):
    if config[key] % device_count:
      raise ConfigError(f'{key} {config[key]} is not divisible by the '
                        f'{device_count} devices; use a multiple of '
                        f'{device_count}')


def fit_eval_batch_size(eval_batch_size: int, num_test: int,
                        device_count: int) -> int:
  """`eval_batch_size`, cut to the test set rounded up to the device count.

  A larger batch would only evaluate padding; the metrics do not change.
  """
  return min(eval_batch_size, -(-num_test // device_count) * device_count)


def _write_json(path: str, obj: Any):
  """Writes JSON atomically: readers never see a half-written file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def check_workdir(workdir: str):
  """Fails early, before any work, if `workdir` cannot be written."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir!r} is a file; give a folder (it is '
                      f'created if missing)')
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f'workdir {workdir!r} cannot be written: '
                      f'{e.strerror or e}; give a writable folder') from e


def lock_workdir(workdir: str):
  """Holds the workdir for this run (process 0 speaks for all processes)."""
  if jax.process_index() == 0:
    return workdir_lock.hold(workdir)
  return contextlib.nullcontext()


def load_dataset(name: str, data_dir: str) -> input_pipeline.Dataset:
  """Loads the data on every process; a tfds download runs on process 0 only.

  The other processes wait for it, then read the prepared copy; if process 0
  fails, all of them stop with its reason.
  """
  if jax.process_count() > 1:
    error = None
    if jax.process_index() == 0:
      try:
        input_pipeline.prepare_dataset(name, data_dir)
      except input_pipeline.DataError as e:
        error = e
    prepared = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if error is not None:
      raise error
    if not prepared:
      raise input_pipeline.DataError(
          f'process 0 could not prepare dataset {name!r}; see its log')
  return input_pipeline.load_dataset(name, data_dir)


def resume_signature(state, config, dataset, total_steps: int,
                     warmup_steps: int) -> dict:
  """What a checkpoint and the config resuming from it must share.

  Each field, if changed, would make the resumed run differ from any
  uninterrupted one in a way no log line can fix: another model or state,
  another batch for every later step (batch_size, seed, data), or another
  learning-rate curve. What may change is in RESUME_CHANGES.
  """
  schedule_steps = None if config.lr_schedule == 'constant' else {
      'total_steps': total_steps, 'warmup_steps': warmup_steps}
  return checkpointing.signature(
      state, model=config.model, image_shape=list(
          dataset.train.images.shape[1:]), num_classes=dataset.num_classes,
      optimizer=config.optimizer, lr_schedule=config.lr_schedule,
      schedule_steps=schedule_steps, batch_size=config.batch_size,
      seed=config.seed, data=input_pipeline.fingerprint(dataset))


def log_config_changes(saved: dict, config: ml_collections.ConfigDict,
                       step: int):
  """Says which allowed config changes a resumed run picks up, and what they
  mean."""
  for key, meaning in RESUME_CHANGES.items():
    if key in saved and saved[key] != config[key]:
      logging.warning('Resuming at step %d with %s=%r (the checkpoint was '
                      'written with %r): %s', step, key, config[key],
                      saved[key], meaning)


def restore_or_initialize(model, tx, image_shape, seed: int, wanted_fn,
                          checkpoint_dir: str, mesh: Mesh):
  """The newest restorable checkpoint, or a fresh state.

  Args:
    model, tx, image_shape, seed: as create_train_state.
    wanted_fn: state -> the config's signature (see resume_signature).
    checkpoint_dir: the run's `checkpoints/` folder.
    mesh: where the state goes.

  Returns:
    (state on the mesh, the checkpoint's meta or None, the signature).
  """
  state = create_train_state(model, tx, image_shape, seed)
  wanted = wanted_fn(state)
  target = jax.tree.map(np.asarray, state)
  restored = checkpointing.restore_latest(checkpoint_dir, target, wanted)
  if restored is None:
    return mesh.put_replicated(state), None, wanted
  restored_state, meta = restored
  return mesh.put_replicated(restored_state), meta, wanted


def _check_finite(state: TrainState, checkpoint_dir: str):
  bad = int(state.nonfinite_step)
  if bad >= 0:
    kept = checkpointing.finished_steps(checkpoint_dir)
    raise DivergenceError(
        f'loss or gradients are not finite at step {bad}; stopped without '
        f'saving it. Latest good checkpoint: '
        f'{f"step {kept[-1]}" if kept else "none"}. Try a lower '
        f'learning_rate')


@contextlib.contextmanager
def _finish_saves_on_error(manager):
  """On any error, lets a checkpoint write in flight complete before exit."""
  try:
    yield
  except BaseException:
    try:
      manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      logging.exception('Pending checkpoint write failed')
    raise


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
    ConfigError, input_pipeline.DataError: bad config or data; nothing in
      workdir was changed.
    checkpointing.IncompatibleCheckpointError: workdir holds another run.
    workdir_lock.WorkdirBusy: another trainer is using workdir.
    DivergenceError: the loss became NaN/inf; no such checkpoint was saved.
    Preempted: a signal stopped the run after saving a checkpoint.
  """
  validate_config(config, jax.device_count())
  is_main = jax.process_index() == 0
  dataset = load_dataset(config.dataset, config.data_dir)
  steps_per_epoch, total_steps, warmup_steps = compute_steps(
      len(dataset.train), config.batch_size, config.num_epochs,
      config.num_train_steps, config.warmup_epochs)
  eval_batch_size = fit_eval_batch_size(
      config.eval_batch_size, len(dataset.test), jax.device_count())
  check_workdir(workdir)
  logging.info('Data: %s; %d train, %d test examples, images %s, %d classes',
               dataset.source, len(dataset.train), len(dataset.test),
               dataset.train.images.shape[1:], dataset.num_classes)
  with lock_workdir(workdir):
    return _train_locked(config, workdir, dataset, steps_per_epoch,
                         total_steps, warmup_steps, eval_batch_size, is_main)


def _train_locked(config, workdir, dataset, steps_per_epoch, total_steps,
                  warmup_steps, eval_batch_size, is_main):
  """train_and_evaluate once the data is loaded and the workdir is held."""
  model = models.create_model(config.model, dataset.num_classes)
  lr_fn = create_learning_rate_fn(config.lr_schedule, config.learning_rate,
                                  total_steps, warmup_steps)
  tx = create_optimizer(config.optimizer, lr_fn, config.momentum,
                        config.weight_decay)
  image_shape = list(dataset.train.images.shape[1:])
  mesh = Mesh()
  checkpoint_dir = os.path.join(os.path.abspath(workdir), 'checkpoints')
  state, meta, wanted = restore_or_initialize(
      model, tx, image_shape, config.seed,
      lambda s: resume_signature(s, config, dataset, total_steps,
                                 warmup_steps), checkpoint_dir, mesh)
  history, elapsed = [], {'train_seconds': 0.0, 'wall_seconds': 0.0}
  start_step = int(state.step)
  if meta is not None:
    history, elapsed = meta['history'], meta['elapsed']
    logging.info('Resumed from step %d in %s', start_step, checkpoint_dir)
    log_config_changes(meta.get('config', {}), config, start_step)
  if start_step >= total_steps:
    summary_path = os.path.join(workdir, 'summary.json')
    if os.path.isfile(summary_path):
      logging.info('Run in %s already finished at step %d of %d; nothing to '
                   'train. Results are in %s', workdir, start_step,
                   total_steps, summary_path)
      return None
    # Killed after its last checkpoint but before its results: everything
    # they need is in that checkpoint.
    logging.warning('Run in %s finished at step %d but has no summary.json; '
                    'writing its results from checkpoint %d', workdir,
                    start_step, start_step)
    return _write_results(
        workdir, config, dataset, history, state, mesh, is_main,
        wall_seconds=elapsed['wall_seconds'],
        train_seconds=elapsed['train_seconds'], total_steps=start_step,
        eval_batch_size=eval_batch_size)
  if is_main:
    # Points logged after the restored step by a killed session go, so the
    # resumed session writes each (tag, step) exactly once.
    event_files.truncate_after(workdir, start_step if meta else -1)
  manager = checkpointing.create_manager(checkpoint_dir,
                                         config.max_checkpoints_to_keep)

  writer = metric_writers.create_default_writer(
      workdir, just_logging=not is_main)
  if start_step == 0:
    writer.write_hparams(config.to_dict())
    logging.info('Model %s:\n%s', config.model, nn.tabulate(
        model, jax.random.PRNGKey(0), compute_flops=True,
        compute_vjp_flops=True, console_kwargs={
            'force_terminal': False, 'force_jupyter': False, 'width': 100}
    )(jnp.ones([1] + image_shape)))
  if is_main:
    _write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    _write_json(os.path.join(workdir, 'dataset.json'), {
        'dataset': config.dataset, 'source': dataset.source,
        'image_shape': image_shape, 'num_classes': dataset.num_classes,
        'class_names': list(dataset.class_names)})

  p_train_step, p_eval_step = jit_steps(mesh)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=total_steps, writer=writer)

  logging.info('Training steps %d..%d (%d per epoch, batch %d on %d devices)',
               start_step, total_steps, steps_per_epoch, config.batch_size,
               jax.device_count())
  batches = input_pipeline.train_batches(
      dataset.train, config.batch_size, config.seed, start_step,
      total_steps - start_step, jax.process_index(), jax.process_count())
  wait_each_step = one_step_in_flight()
  session_start = time.time()
  window_start, window_steps = time.time(), 0
  train_seconds = elapsed['train_seconds']

  def save_checkpoint(step, metrics=None):
    _check_finite(state, checkpoint_dir)
    writer.flush()  # Points up to `step` are on disk before its checkpoint.
    meta = {'history': history, 'signature': wanted,
            'config': config.to_dict(), 'elapsed': {
                'train_seconds': train_seconds,
                'wall_seconds': elapsed['wall_seconds'] + time.time() -
                                session_start}}
    checkpointing.save(manager, step, state, meta, metrics)
    faults.trigger('checkpoint', step)

  with preemption.PreemptionHandler() as stop_signal, _finish_saves_on_error(
      manager):
    for step in range(start_step, total_steps):
      images, labels = next(batches)
      state = p_train_step(state, *mesh.put_batch(images, labels))
      if wait_each_step:
        jax.block_until_ready(state)
      window_steps += 1
      done = step + 1
      if step == start_step:
        jax.block_until_ready(state)  # Once: compile time shows up here.
        logging.info('First training step done %.1f s after process start',
                     time.time() - psutil.Process().create_time())
      faults.trigger('step', done)
      report_progress(done)
      is_last = done == total_steps
      epoch_end = done % steps_per_epoch == 0 or is_last
      log_now = done % config.log_every_steps == 0 or epoch_end

      if log_now:
        _check_finite(state, checkpoint_dir)
        window = _to_float_dict(state.window_metrics)  # Syncs with device.
        seconds = time.time() - window_start
        train_seconds += seconds
        writer.write_scalars(done, {
            'train_loss': window['loss'],
            'train_accuracy': window['accuracy'],
            'learning_rate': float(lr_fn(step)),
            'images_per_second': window_steps * config.batch_size / seconds})
        state = state.replace(
            window_metrics=mesh.put_replicated(TrainMetrics.empty()))
        faults.trigger('log', done)

      if epoch_end:
        train = _to_float_dict(state.epoch_metrics)
        test = evaluate(p_eval_step, state, dataset.test, eval_batch_size,
                        mesh)
        record = {'epoch': done / steps_per_epoch, 'step': done,
                  'train_loss': train['loss'],
                  'train_accuracy': train['accuracy'],
                  'test_loss': test['loss'], 'test_accuracy': test['accuracy']}
        history.append(record)
        writer.write_scalars(done, {
            'epoch_train_loss': train['loss'],
            'epoch_train_accuracy': train['accuracy'],
            'test_loss': test['loss'], 'test_accuracy': test['accuracy']})
        logging.info('epoch %.2f step %d: train loss %.4f acc %.4f, test loss '
                     '%.4f acc %.4f', record['epoch'], done, train['loss'],
                     train['accuracy'], test['loss'], test['accuracy'])
        if done % steps_per_epoch == 0:
          # A run that ends mid-epoch keeps its partial accumulator, so that
          # extending it later (more steps) reports the same epochs.
          state = state.replace(
              epoch_metrics=mesh.put_replicated(TrainMetrics.empty()))

      stop = stop_signal.requested(every_step=not log_now)
      if epoch_end:
        # Every evaluated state is saved with its score, so the best one can
        # be kept (checkpointing.create_manager) and restored exactly.
        save_checkpoint(done, {'test_accuracy': history[-1]['test_accuracy']})
      elif done % config.checkpoint_every_steps == 0 or stop:
        save_checkpoint(done)
      if stop and not is_last:
        checkpointing.wait(manager)
        manager.close()
        writer.close()
        raise Preempted(
            f'stopped by {stop_signal.signal_name} at step {done} of '
            f'{total_steps}; checkpoint saved in {checkpoint_dir}. Run the '
            f'same command again to continue')
      if log_now:
        window_start, window_steps = time.time(), 0

    checkpointing.wait(manager)
  manager.close()
  faults.trigger('results', total_steps)
  wall_seconds = elapsed['wall_seconds'] + time.time() - session_start
  summary = _write_results(
      workdir, config, dataset, history, state, mesh, is_main,
      wall_seconds=wall_seconds, train_seconds=train_seconds,
      total_steps=total_steps, eval_batch_size=eval_batch_size)
  writer.flush()
  writer.close()
  logging.info('Done: test accuracy %.4f after %d steps; %.1f s wall, %.0f '
               'train images/s. Summary: %s', summary['test_accuracy'],
               total_steps, wall_seconds, summary['train_images_per_second'],
               os.path.join(workdir, 'summary.json'))
  return summary


def _write_results(workdir, config, dataset, history, state, mesh, is_main,
                   *, wall_seconds, train_seconds, total_steps,
                   eval_batch_size) -> dict:
  """Writes summary.json, metrics.png and predictions.png; returns summary."""
  final = history[-1]
  # Latest among equals, as Orbax's BestN keeps.
  best = max(reversed(history), key=lambda h: h['test_accuracy'])
  summary = {
      'final_step': total_steps, 'epoch': final['epoch'],
      'train_loss': final['train_loss'],
      'train_accuracy': final['train_accuracy'],
      'test_loss': final['test_loss'], 'test_accuracy': final['test_accuracy'],
      'best_step': best['step'], 'best_test_accuracy': best['test_accuracy'],
      'wall_seconds': wall_seconds, 'train_seconds': train_seconds,
      'train_images_per_second':
          total_steps * config.batch_size / train_seconds,
      'history': history, 'config': config.to_dict(),
  }
  test_images, _, _ = next(input_pipeline.eval_batches(
      dataset.test, eval_batch_size, jax.process_index(),
      jax.process_count()))
  logits = jax.jit(predict_step)(state, *mesh.put_batch(test_images))
  logits = multihost_utils.process_allgather(logits, tiled=True)
  if is_main:
    _write_json(os.path.join(workdir, 'summary.json'), summary)
    plots.plot_history(history, os.path.join(workdir, 'metrics.png'))
    n = min(25, len(logits))
    plots.plot_predictions(
        dataset.test.images[:n], dataset.test.labels[:n],
        np.asarray(logits[:n]).argmax(-1), dataset.class_names,
        os.path.join(workdir, 'predictions.png'))
  return summary
