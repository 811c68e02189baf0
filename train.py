"""Training and evaluation: the state, the jitted steps, and the loop.

`train_and_evaluate(config, workdir)` is the entry point. It reads the config
once at the top; everything it calls takes plain arguments.
"""

import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Any, Iterator, Optional

from absl import logging
from clu import metrics
import flax
from flax import linen as nn
from flax.training import train_state
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import psutil

import augmentation
import checkpointing
import distributed
import event_files
import faults
import host_memory
import image_folder
import input_pipeline
import models
import optimizers
import preemption
import run_config
import workdir_lock

ConfigError = run_config.ConfigError
Preempted = preemption.Preempted
EXIT_PREEMPTED = preemption.EXIT_PREEMPTED


class DivergenceError(RuntimeError):
  """The loss, a gradient or a parameter became NaN or infinite."""


@flax.struct.dataclass
class TopFiveAccuracy(metrics.Average):
  """Share of examples whose label is among the 5 highest logits."""

  @classmethod
  def from_model_output(cls, *, logits, labels, mask=None, **kwargs):
    top5 = jax.lax.top_k(logits, 5)[1]
    hit = jnp.any(top5 == labels[:, None], axis=-1).astype(jnp.float32)
    return super().from_model_output(values=hit, mask=mask)


def create_metrics(num_classes: int) -> type[metrics.Collection]:
  """The one metrics definition: training windows, epochs and evaluation all
  use it, and every name flows as `train_<name>`/`test_<name>` to
  TensorBoard, the history, summary.json, metrics.png and the sweep table."""
  fields = {'loss': metrics.Average.from_output('loss'),
            'accuracy': metrics.Accuracy}
  if num_classes > 5:
    fields['top5_accuracy'] = TopFiveAccuracy
  return metrics.Collection.create(**fields)


class TrainState(train_state.TrainState):
  """Everything a restart needs, as one pytree.

  Besides step, params and optimizer state: the model's other variable
  collections (BatchNorm statistics), the EMA of all model variables (None
  when off), the RNG key, and the metric accumulators of the current epoch and logging
  window, so a run resumed mid-epoch reports the same numbers as one never
  interrupted.
  """
  model_state: Any
  ema_variables: Any
  rng: jax.Array
  epoch_metrics: metrics.Collection
  window_metrics: metrics.Collection
  # First step (counting from 1) whose loss, gradients or new parameters were
  # not finite; -1 if none. Kept on the device so that divergence costs no
  # per-step host sync.
  nonfinite_step: jax.Array

  def eval_variables(self, use_ema: bool) -> dict:
    if use_ema:
      return self.ema_variables
    return {'params': self.params, **self.model_state}


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


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       image_shape, seed: int, ema: bool = False
                       ) -> TrainState:
  """Initialises variables and optimizer state, deterministically in seed."""
  init = state_initializer(model, tx, image_shape, ema)
  # One compiled program instead of dozens of op-by-op dispatches (each
  # compiled on first use): seconds off every start.
  key = jax.random.PRNGKey(seed)
  return jax.jit(init).lower(key).compile(
      compiler_options=RUN_ONCE_COMPILER_OPTIONS)(key)


# For programs that run once (the state's initialisation): LLVM's level-1
# optimisations compile the CNN's in 0.8 s instead of 1.8 s at the default
# level 2 (ResNet-20's: 2.6 s instead of 5.1 s, on 2 CPU cores) and give the
# same values bit for bit (tests/train_test.py).
RUN_ONCE_COMPILER_OPTIONS = {'xla_backend_optimization_level': 1}


def state_initializer(model: nn.Module, tx: optax.GradientTransformation,
                      image_shape, ema: bool = False):
  """The function of a PRNG key that create_train_state compiles."""
  dummy = jnp.ones((1,) + tuple(image_shape))
  collection = create_metrics(model.num_classes)

  def init(seed_key):
    init_rng, rng = jax.random.split(seed_key)
    variables = dict(model.init({'params': init_rng}, dummy))
    params = variables.pop('params')
    state = TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, model_state=variables,
        # A copy: the state is donated, and one buffer cannot be donated
        # twice.
        ema_variables=jax.tree.map(jnp.copy, {'params': params, **variables})
        if ema else None, rng=rng,
        epoch_metrics=collection.empty(), window_metrics=collection.empty(),
        nonfinite_step=jnp.array(-1, jnp.int32))
    return state.replace(step=jnp.zeros((), jnp.int32))

  return init


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Per-example cross-entropy in float32, against smoothed targets if
  label_smoothing > 0: (1 - a) * one_hot + a / num_classes."""
  logits = logits.astype(jnp.float32)
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(
      jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def all_finite(tree) -> jax.Array:
  """True if no leaf of `tree` holds a NaN or an infinity (one reduction)."""
  return jnp.all(jnp.stack([jnp.isfinite(x).all()
                            for x in jax.tree.leaves(tree)]))


def train_step(state: TrainState, images, labels, *,
               label_smoothing: float = 0.0, ema_decay: float = 0.0,
               augment: str = 'none') -> TrainState:
  """One optimizer step; loss and metrics come from the same forward pass.

  Dropout and augmentation draw from fold_in(rng, step), so a resumed step
  draws the same bits; BatchNorm statistics (any mutable collection) are
  updated from the global batch.
  """
  dropout_rng, augment_rng = jax.random.split(
      jax.random.fold_in(state.rng, state.step))
  images = augmentation.augment(augmentation.to_float(images), augment_rng,
                                augment)
  mutable = list(state.model_state)

  def loss_fn(params):
    logits, model_state = state.apply_fn(
        {'params': params, **state.model_state}, images, train=True,
        mutable=mutable, rngs={'dropout': dropout_rng})
    losses = cross_entropy(logits, labels, label_smoothing)
    return losses.mean(), (losses, logits, model_state)

  grads, (losses, logits, model_state) = jax.grad(loss_fn, has_aux=True)(
      state.params)
  new_state = state.apply_gradients(grads=grads)
  ema_variables = state.ema_variables
  if ema_decay:
    ema_variables = update_ema(state.ema_variables, {
        'params': new_state.params, **model_state}, new_state.opt_state,
                               new_state.step, ema_decay)
  finite = jnp.isfinite(losses.mean()) & all_finite(grads) & all_finite(
      new_state.params)
  nonfinite_step = jnp.where((state.nonfinite_step < 0) & ~finite,
                             new_state.step, state.nonfinite_step)
  step_metrics = type(state.epoch_metrics).single_from_model_output(
      loss=losses, logits=logits, labels=labels)
  return new_state.replace(
      model_state=dict(model_state), ema_variables=ema_variables,
      epoch_metrics=state.epoch_metrics.merge(step_metrics),
      window_metrics=state.window_metrics.merge(step_metrics),
      nonfinite_step=nonfinite_step)


def update_ema(ema, variables, opt_state, step, decay: float):
  """The EMA of the model's variables (parameters and BatchNorm statistics,
  so that evaluation sees statistics of the averaged model) after an update.

  Until 1/(n+1) drops below 1 - decay it is the plain mean of the n updates'
  variables and the initial ones, so a short run is not dominated by its
  random initialization.
  """
  updates = step
  if isinstance(opt_state, optax.MultiStepsState):
    updates = opt_state.gradient_step  # Real updates, not micro-steps.
  rate = jnp.maximum(1.0 - decay, 1.0 / (updates + 1.0))
  new = optax.incremental_update(variables, ema, rate)
  if isinstance(opt_state, optax.MultiStepsState):
    # Between accumulated updates the parameters do not move; neither does
    # their average.
    moved = optax.MultiSteps.has_updated(opt_state)
    new = jax.tree.map(lambda n, o: jnp.where(moved, n, o), new, ema)
  return new


def eval_step(state: TrainState, images, labels, mask, *,
              use_ema: bool = False) -> metrics.Collection:
  logits = state.apply_fn(state.eval_variables(use_ema),
                          augmentation.to_float(images), train=False)
  losses = cross_entropy(logits, labels)
  return type(state.epoch_metrics).single_from_model_output(
      loss=losses, logits=logits.astype(jnp.float32), labels=labels,
      mask=mask)


def predict_step(state: TrainState, images, *, use_ema: bool = False):
  logits = state.apply_fn(state.eval_variables(use_ema),
                          augmentation.to_float(images), train=False)
  return logits.astype(jnp.float32)


def jit_steps(mesh: distributed.Mesh, *, label_smoothing: float = 0.0,
              ema_decay: float = 0.0, use_ema: bool = False,
              augment: str = 'none'):
  """The jitted (train_step, eval_step) every caller uses.

  The state is donated to the train step. Outputs are pinned replicated, so
  the state keeps one sharding and metrics can be read on every process.
  """
  return (jax.jit(functools.partial(train_step,
                                    label_smoothing=label_smoothing,
                                    ema_decay=ema_decay, augment=augment),
                  donate_argnums=0, out_shardings=mesh.replicated),
          jax.jit(functools.partial(eval_step, use_ema=use_ema),
                  out_shardings=mesh.replicated))


def evaluate(eval_fn, state, split, batch_size,
             mesh: distributed.Mesh) -> dict:
  """Every metric over every example of `split`, exactly once."""
  total = None
  wait = distributed.one_step_in_flight()
  batches = input_pipeline.eval_batches(
      split, batch_size, jax.process_index(), jax.process_count(),
      threads=input_pipeline.READ_THREADS)
  for device_batch in input_pipeline.prefetch(batches, mesh.put_batch):
    batch_metrics = eval_fn(state, *device_batch)
    if wait:
      jax.block_until_ready(batch_metrics)
    total = batch_metrics if total is None else total.merge(batch_metrics)
    if faults.enabled():  # Test hook; reading the step syncs.
      faults.trigger('eval', int(state.step))
  return _to_float_dict(total)


def eval_splits(dataset: input_pipeline.Dataset) -> dict:
  """The splits evaluated each epoch, by name: validation (if any), test."""
  splits = {'test': dataset.test}
  if dataset.validation is not None:
    splits = {'validation': dataset.validation, **splits}
  return splits


def selection_split(dataset: input_pipeline.Dataset) -> str:
  """The split the best checkpoint is chosen on: never test if there is a
  validation split."""
  return 'test' if dataset.validation is None else 'validation'


def train_inputs(config: ml_collections.ConfigDict, split, start_step: int,
                 num_steps: int, mesh: distributed.Mesh) -> Iterator[tuple]:
  """(images, labels) on the devices for steps [start, start + num).

  From the host with `prefetch_batches` transfers ahead, or, with
  `data_on_device`, gathered on the device from a copy of the training set
  there (the same indices, so the same batches).
  """
  if config.data_on_device:
    return _gather_on_device(split, config.batch_size, config.seed,
                             start_step, num_steps, mesh)
  batches = input_pipeline.train_batches(
      split, config.batch_size, config.seed, start_step, num_steps,
      jax.process_index(), jax.process_count(),
      threads=input_pipeline.READ_THREADS)
  return input_pipeline.prefetch(batches, mesh.put_batch,
                                 config.prefetch_batches)


def _gather_on_device(split, batch_size: int, seed: int, start_step: int,
                      num_steps: int, mesh: distributed.Mesh):
  if not input_pipeline.in_memory(split):
    raise input_pipeline.DataError(
        'data_on_device needs the training set in memory; set '
        '--config.data_loading=memory or data_on_device=false')
  images = jax.device_put(split.images, mesh.replicated)
  labels = jax.device_put(split.labels, mesh.replicated)
  logging.info('Training set on the devices: %.1f MB of uint8 images',
               split.images.nbytes / 1e6)
  gather = jax.jit(lambda x, y, i: (x[i], y[i]),
                   out_shardings=(mesh.batch, mesh.batch))
  # Indices only: the host's work per step is a slice of a permutation.
  indices = input_pipeline.train_batch_indices(len(split), batch_size, seed,
                                               start_step)
  for i in range(num_steps):
    yield gather(images, labels, jax.device_put(indices(i), mesh.batch))


def _to_float_dict(collection: metrics.Collection) -> dict:
  return {k: float(v) for k, v in collection.compute().items()}


def _write_json(path: str, obj: Any):
  """Writes JSON atomically: readers never see a half-written file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  return models.create_model(config.model, num_classes,
                             **config.model_kwargs.to_dict())


def create_optimizer_and_schedule(config: ml_collections.ConfigDict,
                                  total_steps: int, warmup_steps: int):
  """(optax optimizer, step -> learning rate) for the config.

  With gradient accumulation the schedule counts optimizer updates, one per
  `grad_accum_steps` steps.
  """
  accum = config.grad_accum_steps
  schedule = optimizers.create_learning_rate_fn(
      config.lr_schedule, config.learning_rate, max(1, total_steps // accum),
      warmup_steps // accum)
  tx = optimizers.create_optimizer(
      config.optimizer, schedule, momentum=config.momentum,
      weight_decay=config.weight_decay, grad_clip_norm=config.grad_clip_norm,
      grad_accum_steps=accum)
  return tx, lambda step: schedule(step // accum)


def lock_workdir(workdir: str):
  """Holds the workdir for this run (process 0 speaks for all processes)."""
  if jax.process_index() == 0:
    return workdir_lock.hold(workdir)
  return contextlib.nullcontext()


def data_options(config: ml_collections.ConfigDict) -> dict:
  """The keyword arguments of input_pipeline.load_dataset: the config's
  data keys, and this job's processes (which share an image folder's scan)."""
  return dict(image_size=config.image_size, channels=config.channels,
              skip_bad_images=config.skip_bad_images,
              loading=config.data_loading,
              validation_fraction=config.validation_fraction, seed=config.seed,
              processes=image_folder.Processes(
                  jax.process_index(), jax.process_count(),
                  multihost_utils.process_allgather))


def load_dataset(config: ml_collections.ConfigDict) -> input_pipeline.Dataset:
  """Loads the data on every process; a tfds download runs on process 0 only.

  The other processes wait for it, then read the prepared copy; if process 0
  fails, all of them stop with its reason.
  """
  name, data_dir = config.dataset, config.data_dir
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
  return input_pipeline.load_dataset(name, data_dir, **data_options(config))


def restore_or_initialize(model, tx, image_shape, seed: int, ema: bool,
                          wanted_fn, checkpoint_dir: str,
                          mesh: distributed.Mesh):
  """The newest restorable checkpoint, or a fresh state.

  Args:
    model, tx, image_shape, seed, ema: as create_train_state.
    wanted_fn: state -> the config's signature (run_config.resume_signature).
    checkpoint_dir: the run's `checkpoints/` folder.
    mesh: where the state goes.

  Returns:
    (state on the mesh, the checkpoint's meta or None, the signature).
  """
  state = create_train_state(model, tx, image_shape, seed, ema)
  wanted = wanted_fn(state)
  target = jax.tree.map(np.asarray, state)
  restored = checkpointing.restore_latest(checkpoint_dir, target, wanted)
  if restored is None:
    return mesh.put_replicated(state), None, wanted
  restored_state, meta = restored
  return mesh.put_replicated(restored_state), meta, wanted


def process_age_seconds() -> float:
  """Seconds since this process started.

  On Linux from the kernel's boot-time clock in 1/100 s (_age_from_proc).
  psutil's create_time adds the boot time, which the kernel gives in whole
  seconds, so its age can be up to 1 s off; it is the answer where /proc is
  missing or disagrees with it by more than that (a container may show its
  own uptime but the host's start times).
  """
  coarse = time.time() - psutil.Process().create_time()
  fine = _age_from_proc()
  return fine if fine is not None and abs(fine - coarse) < 1.5 else coarse


def _age_from_proc() -> Optional[float]:
  """/proc/uptime less this process's start time in /proc/self/stat."""
  try:
    with open('/proc/uptime') as f:
      uptime = float(f.read().split()[0])
    with open('/proc/self/stat') as f:
      # Field 22; the command name (field 2) may hold spaces, so count from
      # its closing parenthesis.
      start_ticks = int(f.read().rsplit(')', 1)[1].split()[19])
  except (OSError, ValueError, IndexError):
    return None
  return uptime - start_ticks / os.sysconf('SC_CLK_TCK')


@dataclasses.dataclass
class Progress:
  """What a checkpoint carries besides the state: the epoch history and the
  time spent, over all sessions of the run."""
  history: list
  train_seconds: float = 0.0
  earlier_wall_seconds: float = 0.0
  session_start: float = dataclasses.field(default_factory=time.time)

  @classmethod
  def from_meta(cls, meta: Optional[dict]) -> 'Progress':
    if meta is None:
      return cls(history=[])
    return cls(history=meta['history'],
               train_seconds=meta['elapsed']['train_seconds'],
               earlier_wall_seconds=meta['elapsed']['wall_seconds'])

  @property
  def wall_seconds(self) -> float:
    return self.earlier_wall_seconds + time.time() - self.session_start

  def meta(self, signature: dict, config: ml_collections.ConfigDict) -> dict:
    return {'history': self.history, 'signature': signature,
            'config': config.to_dict(),
            'elapsed': {'train_seconds': self.train_seconds,
                        'wall_seconds': self.wall_seconds}}


def check_finite(state: TrainState, checkpoint_dir: str):
  """Raises DivergenceError if a step so far was not finite (a host sync)."""
  bad = int(state.nonfinite_step)
  if bad >= 0:
    kept = checkpointing.finished_steps(checkpoint_dir)
    raise DivergenceError(
        f'loss or gradients are not finite at step {bad}; stopped without '
        f'saving it. Latest good checkpoint: '
        f'{f"step {kept[-1]}" if kept else "none"}. Try a lower '
        f'learning_rate')


def log_train_window(writer, state: TrainState, step: int,
                     learning_rate: float, images_per_second: float,
                     mesh: distributed.Mesh) -> TrainState:
  """Writes the metrics of the steps since the last log; starts a new
  window."""
  window = _to_float_dict(state.window_metrics)  # Syncs with the device.
  writer.write_scalars(step, {
      **{f'train_{k}': v for k, v in window.items()},
      'learning_rate': learning_rate,
      'images_per_second': images_per_second})
  return state.replace(window_metrics=mesh.put_replicated(
      type(state.window_metrics).empty()))


def end_epoch(writer, state: TrainState, step: int, steps_per_epoch: int,
              evaluations: dict, history: list, mesh: distributed.Mesh
              ) -> TrainState:
  """Records the epoch's train metrics and `evaluations` ({split: metrics},
  e.g. validation and test); starts a new epoch accumulator at epoch
  boundaries."""
  train = _to_float_dict(state.epoch_metrics)
  evaluated = {f'{split}_{k}': v for split, metrics in evaluations.items()
               for k, v in metrics.items()}
  record = {'epoch': step / steps_per_epoch, 'step': step,
            **{f'train_{k}': v for k, v in train.items()}, **evaluated}
  history.append(record)
  writer.write_scalars(step, {
      **{f'epoch_train_{k}': v for k, v in train.items()}, **evaluated})
  logging.info('epoch %.2f step %d: %s', record['epoch'], step, ', '.join(
      f'{k} {v:.4f}' for k, v in record.items() if k not in ('epoch',
                                                             'step')))
  if step % steps_per_epoch:
    # A run that ends mid-epoch keeps its partial accumulator, so that
    # extending it later (more steps) reports the same epochs.
    return state
  return state.replace(epoch_metrics=mesh.put_replicated(
      type(state.epoch_metrics).empty()))


def save(manager, step: int, state: TrainState, meta: dict, writer,
         checkpoint_dir: str, scores: Optional[dict] = None):
  """Starts writing checkpoint `step`, never of a diverged state.

  `scores` ({'test_accuracy': ..., 'validation_accuracy': ...}) go with a
  checkpoint of an evaluated state; checkpointing keeps the best one.
  """
  check_finite(state, checkpoint_dir)
  writer.flush()  # Points up to `step` are on disk before its checkpoint.
  checkpointing.save(manager, step, state, meta, scores)
  faults.trigger('checkpoint', step)


def log_model(model: nn.Module, name: str, image_shape):
  """Logs a table of the model's layers, parameters and FLOPs."""
  logging.info('Model %s:\n%s', name, nn.tabulate(
      model, jax.random.PRNGKey(0), compute_flops=True,
      compute_vjp_flops=True, console_kwargs={
          'force_terminal': False, 'force_jupyter': False, 'width': 100}
  )(jnp.ones([1] + list(image_shape))))


class ReportProgress:
  """About once a minute and at the last step: logs steps/s, progress and
  the time left, and writes steps_per_sec and uptime to TensorBoard.

  clu's periodic_actions.ReportProgress does this too, but importing it
  imports TensorFlow (through clu.metric_writers): seconds of start-up.
  """

  def __init__(self, total_steps: int, writer, every_seconds: float = 60.0):
    self._total, self._writer, self._every = total_steps, writer, every_seconds
    self._start = time.monotonic()
    self._last_step, self._last_time = None, self._start

  def __call__(self, step: int):
    now = time.monotonic()
    if self._last_step is None:  # The first step of a session: compile time.
      self._last_step, self._last_time = step, now
      return
    if step == self._last_step or (step != self._total
                                   and now - self._last_time < self._every):
      return
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    left = (self._total - step) / max(rate, 1e-9)
    logging.info('%.1f steps/s, %.1f%% (%d/%d), %d min %02d s left', rate,
                 100 * step / self._total, step, self._total, left // 60,
                 left % 60)
    self._writer.write_scalars(step, {'steps_per_sec': rate,
                                      'uptime': now - self._start})
    self._last_step, self._last_time = step, now


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
  run_config.validate_config(config, jax.device_count(),
                             jax.process_count())
  dataset = load_dataset(config)
  steps_per_epoch, total_steps, warmup_steps = compute_steps(
      len(dataset.train), config.batch_size, config.num_epochs,
      config.num_train_steps, config.warmup_epochs)
  eval_batch_size = run_config.fit_eval_batch_size(
      config.eval_batch_size, max(map(len, eval_splits(dataset).values())),
      jax.device_count())
  run_config.check_workdir(workdir)
  logging.info('Data: %s; %d train, %s%d test examples, images %s, %d '
               'classes', dataset.source, len(dataset.train),
               '' if dataset.validation is None else
               f'{len(dataset.validation)} validation, ', len(dataset.test),
               dataset.train.image_shape, dataset.num_classes)
  with lock_workdir(workdir):
    return _train(config, workdir, dataset, steps_per_epoch, total_steps,
                  warmup_steps, eval_batch_size)


def _train(config, workdir, dataset, steps_per_epoch, total_steps,
           warmup_steps, eval_batch_size):
  """train_and_evaluate once the data is loaded and the workdir is held."""
  is_main = jax.process_index() == 0
  model = create_model(config, dataset.num_classes)
  tx, lr_fn = create_optimizer_and_schedule(config, total_steps,
                                            warmup_steps)
  image_shape = list(dataset.train.image_shape)
  mesh = distributed.Mesh()
  checkpoint_dir = os.path.join(os.path.abspath(workdir), 'checkpoints')
  state, meta, signature = restore_or_initialize(
      model, tx, image_shape, config.seed, config.ema_decay > 0,
      lambda s: run_config.resume_signature(
          s, config, dataset, total_steps // config.grad_accum_steps,
          warmup_steps // config.grad_accum_steps), checkpoint_dir, mesh)
  progress = Progress.from_meta(meta)
  start_step = int(state.step)
  if meta is not None:
    logging.info('Resumed from step %d in %s', start_step, checkpoint_dir)
    run_config.log_config_changes(meta.get('config', {}), config, start_step)
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
    return _write_results(workdir, config, dataset, progress, state, mesh,
                          start_step, eval_batch_size)
  if is_main:
    # Points logged after the restored step by a killed session go, so the
    # resumed session writes each (tag, step) exactly once.
    event_files.truncate_after(workdir, start_step if meta else -1)
    _write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    _write_json(os.path.join(workdir, 'dataset.json'), {
        'dataset': config.dataset, 'source': dataset.source,
        'image_shape': image_shape, 'num_classes': dataset.num_classes,
        'class_names': list(dataset.class_names)})
  manager = checkpointing.create_manager(checkpoint_dir,
                                         config.max_checkpoints_to_keep)
  writer = event_files.SummaryWriter(workdir if is_main else None)
  if start_step == 0:
    writer.write_hparams(config.to_dict())

  p_train_step, p_eval_step = jit_steps(
      mesh, label_smoothing=config.label_smoothing,
      ema_decay=config.ema_decay, use_ema=config.eval_with_ema,
      augment=config.augment)
  report_progress = ReportProgress(total_steps, writer)
  logging.info('Training steps %d..%d (%d per epoch, batch %d on %d %s '
               'devices; XLA_FLAGS=%r)', start_step, total_steps,
               steps_per_epoch, config.batch_size, jax.device_count(),
               jax.default_backend(), os.environ.get('XLA_FLAGS', ''))
  batches = train_inputs(config, dataset.train, start_step,
                         total_steps - start_step, mesh)
  wait_each_step = distributed.one_step_in_flight()
  window_start, window_steps = time.time(), 0

  with preemption.PreemptionHandler() as stop_signal, _finish_saves_on_error(
      manager):
    for step in range(start_step, total_steps):
      state = p_train_step(state, *next(batches))
      if wait_each_step or step == start_step:
        jax.block_until_ready(state)
      if step == start_step:  # Compile time shows up here, once.
        logging.info('First training step done %.2f s after process start',
                     process_age_seconds())
        if step == 0:  # After the step: tabulating costs time, not results.
          log_model(model, config.model, image_shape)
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
        state = log_train_window(
            writer, state, done, float(lr_fn(step)),
            window_steps * config.batch_size / seconds, mesh)
        faults.trigger('log', done)
      if epoch_end:
        evaluations = {split: evaluate(p_eval_step, state, data,
                                       eval_batch_size, mesh)
                       for split, data in eval_splits(dataset).items()}
        state = end_epoch(writer, state, done, steps_per_epoch, evaluations,
                          progress.history, mesh)
      stop = stop_signal.requested(every_step=not log_now)
      # Every evaluated state is saved with its score, so the best one can
      # be kept (checkpointing.create_manager) and restored exactly.
      if epoch_end or done % config.checkpoint_every_steps == 0 or stop:
        save(manager, done, state, progress.meta(signature, config), writer,
             checkpoint_dir, {f'{split}_accuracy': metrics['accuracy']
                              for split, metrics in evaluations.items()}
             if epoch_end else None)
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
  summary = _write_results(workdir, config, dataset, progress, state, mesh,
                           total_steps, eval_batch_size)
  writer.close()
  logging.info('Done: test accuracy %.4f after %d steps; %.1f s wall, %.0f '
               'train images/s. Summary: %s', summary['test_accuracy'],
               total_steps, summary['wall_seconds'],
               summary['train_images_per_second'],
               os.path.join(workdir, 'summary.json'))
  return summary


def _write_results(workdir, config, dataset, progress: Progress, state, mesh,
                   total_steps: int, eval_batch_size: int) -> dict:
  """Writes summary.json, metrics.png and predictions.png; returns summary."""
  final = progress.history[-1]
  split = selection_split(dataset)
  # Latest among equals, as Orbax's BestN keeps.
  best = max(reversed(progress.history), key=lambda h: h[f'{split}_accuracy'])
  summary = {
      'final_step': total_steps, 'epoch': final['epoch'],
      **{k: v for k, v in final.items()
         if k.startswith(('train_', 'validation_', 'test_'))},
      # The best checkpoint is chosen on the split `best_chosen_on`; its
      # test accuracy is best_test_accuracy either way.
      'best_chosen_on': split, 'best_step': best['step'],
      **{f'best_{k}': v for k, v in best.items()
         if k in ('validation_accuracy', 'test_accuracy')},
      'wall_seconds': progress.wall_seconds,
      'train_seconds': progress.train_seconds,
      'train_images_per_second':
          total_steps * config.batch_size / max(progress.train_seconds, 1e-9),
      'history': progress.history, 'config': config.to_dict(),
      # What else shaped the speed: the backend, XLA's flags, malloc's
      # settings (host_memory).
      'runtime': {'backend': jax.default_backend(),
                  'devices': jax.device_count(),
                  'xla_flags': os.environ.get('XLA_FLAGS', ''),
                  'malloc': host_memory.applied or 'unchanged'},
  }
  test_images, _, _ = next(input_pipeline.eval_batches(
      dataset.test, eval_batch_size, jax.process_index(),
      jax.process_count()))
  predict = jax.jit(functools.partial(predict_step,
                                      use_ema=config.eval_with_ema))
  logits = predict(state, *mesh.put_batch(test_images))
  logits = multihost_utils.process_allgather(logits, tiled=True)
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, 'summary.json'), summary)
    import plots  # pylint: disable=g-import-not-at-top  # matplotlib: 1 s.
    plots.plot_history(progress.history, os.path.join(workdir, 'metrics.png'))
    n = min(25, len(logits))
    images, labels = dataset.test.get(np.arange(n))
    plots.plot_predictions(
        images, labels,
        np.asarray(logits[:n]).argmax(-1), dataset.class_names,
        os.path.join(workdir, 'predictions.png'))
  return summary
