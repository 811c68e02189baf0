"""The pure JAX pieces: the state, the metrics and the jitted steps.

`TrainState` is everything a restart needs, as one pytree. `train_step`,
`eval_step` and `predict_step` are pure functions of the state and a batch;
`jit_steps` jits the train and eval steps in one place (the state donated to
the train step). `create_train_state` builds the model's variables and the
optimizer state from a seed, `compute_steps` turns durations into steps, and
`evaluate` runs the eval step over every example of a split. The training
loop (train.py), eval and predict (inference.py) and the benchmarks all take
these from here.
"""

import contextlib
import functools
from typing import Any, Optional

from clu import metrics
import flax
from flax import linen as nn
from flax.training import train_state
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import optax

import augmentation
import distributed
import faults
import imported_models
import input_pipeline
import models
import optimizers

# For programs that run once (the state's initialisation): LLVM's level-1
# optimisations compile in about half the time of the default level 2 and
# give the same values bit for bit (tests/steps_test.py); what it saves is
# measured in docs/performance.md.
RUN_ONCE_COMPILER_OPTIONS = {'xla_backend_optimization_level': 1}


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
  total = num_train_steps if num_train_steps >= 0 else num_epochs * per_epoch
  warmup = int(round(warmup_epochs * per_epoch))
  return per_epoch, total, warmup


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       image_shape, seed: int, ema: bool = False,
                       normalize: str = 'none') -> TrainState:
  """Initialises variables and optimizer state, deterministically in seed.

  `normalize` (config.normalize, see augmentation.parse_normalize) goes
  into the state's apply_fn, so that every step normalizes alike.
  """
  init = state_initializer(model, tx, image_shape, ema, normalize)
  # One compiled program instead of dozens of op-by-op dispatches (each
  # compiled on first use).
  key = jax.random.PRNGKey(seed)
  return jax.jit(init).lower(key).compile(
      compiler_options=RUN_ONCE_COMPILER_OPTIONS)(key)


def state_initializer(model: nn.Module, tx: optax.GradientTransformation,
                      image_shape, ema: bool = False, normalize: str = 'none'):
  """The function of a PRNG key that create_train_state compiles."""
  dummy = jnp.ones((1,) + tuple(image_shape))
  collection = create_metrics(model.num_classes)
  stats = augmentation.parse_normalize(normalize, image_shape[-1])
  apply_fn = model.apply if stats is None else augmentation.normalized_apply(
      model.apply, *stats)

  def init(seed_key):
    init_rng, rng = jax.random.split(seed_key)
    variables = dict(model.init(models.init_keys(init_rng), dummy))
    params = variables.pop('params')
    state = TrainState.create(
        apply_fn=apply_fn, params=params, tx=tx, model_state=variables,
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
  leaves = jax.tree.leaves(tree)
  if not leaves:  # A model without state.
    return jnp.array(True)
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


class FrozenNormError(ValueError):
  """freeze matches a BatchNorm that cannot be switched to its running
  statistics."""


def check_frozen_norms(model: nn.Module, image_shape, freeze: str):
  """Raises FrozenNormError if a training step of `model` with `freeze`
  could not hold the frozen BatchNorm statistics (traced abstractly, no
  compile)."""
  if not freeze:
    return
  images = jnp.ones((2, *image_shape))
  keys = models.init_keys(jax.random.PRNGKey(0))

  def step(variables):
    with nn.intercept_methods(_frozen_norms(freeze)):
      return model.apply(variables, images, train=True,
                         mutable=list(set(variables) - {'params'}),
                         rngs={'dropout': keys['dropout']})

  jax.eval_shape(step, jax.eval_shape(
      functools.partial(model.init, train=False), keys, images))


def _frozen_norms(freeze: str):
  """A Flax method interceptor that runs each BatchNorm whose parameters
  `freeze` matches on its running statistics, as in eval: a frozen part
  neither normalizes by the batch's statistics nor updates its own."""

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name == '__call__' and
        isinstance(module, nn.BatchNorm) and any(
            optimizers.is_frozen('/'.join([*module.path, name]), freeze)
            for name in ('scale', 'bias'))):
      if module.use_running_average is not None:
        raise FrozenNormError(
            f'freeze {freeze!r} matches {"/".join(module.path)}, a BatchNorm '
            f'built with use_running_average, whose statistics cannot then '
            f'be held while the rest trains; accepted: a freeze that leaves '
            f'it out, or the model passing it at call time: nn.BatchNorm()('
            f'x, use_running_average=not train)')
      kwargs = {**kwargs, 'use_running_average': True}
    elif (context.method_name == '__call__' and 'nnx_method' not in kwargs
          and isinstance(module, imported_models.NNXModel)):
      kwargs = {**kwargs, 'freeze': freeze}  # It switches its own layers.
    return next_fun(*args, **kwargs)

  return interceptor


def train_step(state: TrainState, images, labels, *,
               label_smoothing: float = 0.0, ema_decay: float = 0.0,
               augment: str = 'none', freeze: str = '',
               augment_kwargs: Optional[dict] = None,
               num_classes: int = 0, class_weights=None,
               input_size=None) -> TrainState:
  """One optimizer step; loss and metrics come from the same forward pass.

  With mixup or CutMix in `augment` the loss is against the mixed (soft)
  targets of `num_classes` classes, and the accuracy against each mixed
  image's dominant label. `class_weights` (a tuple, one per class) weighs
  each example's loss by its class (by its targets' mix of classes): the
  mean over the batch of weight * loss.

  Dropout and augmentation draw from fold_in(rng, step), so a resumed step
  draws the same bits; BatchNorm statistics (any mutable collection) are
  updated from the global batch, except those of the BatchNorm layers
  `freeze` matches (the optimizer leaves their parameters alone).
  `input_size` ((height, width)): the model's; an rrc step resizes its
  crops of images stored larger to it.
  """
  dropout_rng, augment_rng = jax.random.split(
      jax.random.fold_in(state.rng, state.step))
  targets = None  # Soft targets, when the augmentation mixes labels.
  if augmentation.mixes(augment):
    images, targets = augmentation.augment(
        augmentation.to_float(images), augment_rng, augment, augment_kwargs,
        targets=jax.nn.one_hot(labels, num_classes), size=input_size)
    labels = targets.argmax(-1)  # Accuracy: against the dominant label.
  else:
    images = augmentation.augment(augmentation.to_float(images), augment_rng,
                                  augment, augment_kwargs, size=input_size)
  mutable = list(state.model_state)

  def loss_fn(params):
    with (nn.intercept_methods(_frozen_norms(freeze)) if freeze else
          contextlib.nullcontext()):
      logits, model_state = state.apply_fn(
          {'params': params, **state.model_state}, images, train=True,
          mutable=mutable, rngs={'dropout': dropout_rng})
    losses = (cross_entropy(logits, labels, label_smoothing)
              if targets is None else optax.softmax_cross_entropy(
                  logits.astype(jnp.float32),
                  optax.smooth_labels(targets, label_smoothing)))
    if class_weights is None:
      return losses.mean(), (losses, logits, model_state)
    weights = jnp.asarray(class_weights, jnp.float32)
    weights = (weights[labels] if targets is None else targets @ weights)
    return (weights * losses).mean(), (losses, logits, model_state)

  grads, (losses, logits, model_state) = jax.grad(loss_fn, has_aux=True)(
      state.params)
  new_state = state.apply_gradients(grads=grads)
  ema_variables = state.ema_variables
  if ema_decay:
    ema_variables = update_ema(state.ema_variables, {
        'params': new_state.params, **model_state}, new_state.opt_state,
                               new_state.step, ema_decay)
  # Model state too: BatchNorm statistics can blow up while the loss of the
  # batch (computed with the batch's own statistics) stays finite.
  if freeze:  # Frozen gradients are never used: XLA then skips them.
    grads = [g for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
             if not optimizers.is_frozen(models.parameter_path(path), freeze)]
  finite = (jnp.isfinite(losses.mean()) & all_finite(grads) &
            all_finite(new_state.params) & all_finite(model_state))
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
    # their average. (optax.MultiSteps.has_updated's test, which needs the
    # MultiSteps object, not only its state.)
    moved = (opt_state.mini_step == 0) & (opt_state.gradient_step > 0)
    new = jax.tree.map(lambda n, o: jnp.where(moved, n, o), new, ema)
  return new


def eval_step(state: TrainState, images, labels, mask, *,
              use_ema: bool = False, flip: bool = False,
              input_size=None) -> metrics.Collection:
  """The metrics of one batch. Images stored larger than `input_size` (a
  validation split carved from a train split kept larger for rrc) are
  centre-cropped to it, as eval's resizing crops."""
  if input_size and tuple(images.shape[1:3]) != tuple(input_size):
    top = (images.shape[1] - input_size[0]) // 2
    left = (images.shape[2] - input_size[1]) // 2
    images = images[:, top:top + input_size[0], left:left + input_size[1]]
  return eval_and_predict_step(state, images, labels, mask,
                               use_ema=use_ema, flip=flip)[0]


def eval_logits(state: TrainState, images, *, use_ema: bool = False,
                flip: bool = False):
  """The model's float32 logits in eval mode; with `flip` (config.eval_flip)
  the mean of those of the images and their left-right mirrors."""
  variables = state.eval_variables(use_ema)
  images = augmentation.to_float(images)
  logits = state.apply_fn(variables, images, train=False).astype(jnp.float32)
  if flip:
    mirrored = state.apply_fn(variables, images[:, :, ::-1], train=False)
    logits = (logits + mirrored.astype(jnp.float32)) / 2
  return logits


def predict_step(state: TrainState, images, *, use_ema: bool = False,
                 flip: bool = False):
  return eval_logits(state, images, use_ema=use_ema, flip=flip)


def eval_and_predict_step(state: TrainState, images, labels, mask, *,
                          use_ema: bool = False, flip: bool = False):
  """(eval_step's metrics, the predicted class of each example)."""
  logits = eval_logits(state, images, use_ema=use_ema, flip=flip)
  losses = cross_entropy(logits, labels)
  return type(state.epoch_metrics).single_from_model_output(
      loss=losses, logits=logits.astype(jnp.float32), labels=labels,
      mask=mask), logits.argmax(-1)


def jit_steps(mesh: distributed.Mesh, *, label_smoothing: float = 0.0,
              ema_decay: float = 0.0, use_ema: bool = False,
              augment: str = 'none', freeze: str = '',
              augment_kwargs: Optional[dict] = None, num_classes: int = 0,
              eval_flip: bool = False, class_weights=None, input_size=None):
  """The jitted (train_step, eval_step) every caller uses.

  The state is donated to the train step. Outputs are pinned replicated, so
  the state keeps one sharding and metrics can be read on every process.
  """
  return (jax.jit(functools.partial(train_step,
                                    label_smoothing=label_smoothing,
                                    ema_decay=ema_decay, augment=augment,
                                    freeze=freeze,
                                    augment_kwargs=augment_kwargs,
                                    num_classes=num_classes,
                                    class_weights=class_weights,
                                    input_size=input_size),
                  donate_argnums=0, out_shardings=mesh.replicated),
          jax.jit(functools.partial(eval_step, use_ema=use_ema,
                                    flip=eval_flip, input_size=input_size),
                  out_shardings=mesh.replicated))


def create_optimizer_and_schedule(optimizer: str, learning_rate: float,
                                  lr_schedule: str, total_steps: int,
                                  warmup_steps: int, *, momentum: float = 0.0,
                                  weight_decay: float = 0.0,
                                  grad_clip_norm: float = 0.0,
                                  grad_accum_steps: int = 1,
                                  freeze: str = '', lr_multipliers: str = ''):
  """(optax optimizer, step -> learning rate).

  With gradient accumulation the schedule counts optimizer updates, one per
  `grad_accum_steps` steps.
  """
  accum = grad_accum_steps
  schedule = optimizers.create_learning_rate_fn(
      lr_schedule, learning_rate, max(1, total_steps // accum),
      warmup_steps // accum)
  tx = optimizers.create_optimizer(
      optimizer, schedule, momentum=momentum, weight_decay=weight_decay,
      grad_clip_norm=grad_clip_norm, grad_accum_steps=accum, freeze=freeze,
      lr_multipliers=lr_multipliers, plateau=lr_schedule == 'plateau')
  return tx, lambda step: schedule(step // accum)


def optimizer_options(config) -> dict:
  """The config's optimizer keys as create_optimizer_and_schedule's keyword
  arguments (training and eval build the optimizer alike)."""
  return dict(optimizer=config.optimizer, learning_rate=config.learning_rate,
              lr_schedule=config.lr_schedule, momentum=config.momentum,
              weight_decay=config.weight_decay,
              grad_clip_norm=config.grad_clip_norm,
              grad_accum_steps=config.grad_accum_steps, freeze=config.freeze,
              lr_multipliers=config.lr_multipliers)


def evaluate(eval_fn, state, split, batch_size,
             mesh: distributed.Mesh, on_batch=None) -> dict:
  """Every metric over every example of `split`, exactly once.

  Args:
    eval_fn: a jitted eval_step; or, with `on_batch`, a function returning
      (metrics, other outputs) (see eval_and_predict_step).
    state: the TrainState.
    split: the examples.
    batch_size: examples per batch, padded at the end.
    mesh: where batches go.
    on_batch: if given, called with the other outputs and the batch's labels
      (all processes' rows, host arrays), so that a caller gets per-example
      results from the same pass.
  """
  total = None
  wait = distributed.one_step_in_flight()
  batches = input_pipeline.eval_batches(
      split, batch_size, jax.process_index(), jax.process_count(),
      threads=input_pipeline.READ_THREADS)
  for device_batch in input_pipeline.prefetch(batches, mesh.put_batch):
    batch_metrics = eval_fn(state, *device_batch)
    if on_batch is not None:
      batch_metrics, outputs = batch_metrics
      on_batch(multihost_utils.process_allgather(outputs, tiled=True),
               multihost_utils.process_allgather(device_batch[1],
                                                 tiled=True))
    if wait:
      jax.block_until_ready(batch_metrics)
    total = batch_metrics if total is None else total.merge(batch_metrics)
    if faults.enabled():  # Test hook; reading the step syncs.
      faults.trigger('eval', int(state.step))
  return to_float_dict(total)


def to_float_dict(collection: metrics.Collection) -> dict:
  """The collection's metrics as Python floats (a host sync)."""
  return {k: float(v) for k, v in collection.compute().items()}
