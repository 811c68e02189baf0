"""Optimizers and learning-rate schedules, each chosen by name from a table.

Everything is optax: weight decay through `optax.add_decayed_weights` (or
`optax.adamw`) with a mask that skips biases and normalization parameters,
`optax.clip_by_global_norm`, and `optax.MultiSteps` for gradient
accumulation, whose counters live in the optimizer state and so resume
exactly.
"""

import re
from typing import Callable

import jax
import jax.numpy as jnp
import optax

import models

# Optimizers that use config.weight_decay (masked, see decay_mask).
TAKE_WEIGHT_DECAY = ('sgd', 'momentum', 'adamw')


class OptimizerError(ValueError):
  """An optimizer setting that cannot be used; the message names it."""


def decay_mask(params):
  """True for the weights weight decay applies to: kernels and embeddings.

  Biases and normalization scales and offsets are 1-D and are left alone, as
  is usual (decaying a BatchNorm scale only fights the normalization).
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _sgd(learning_rate, momentum, weight_decay):
  # Coupled weight decay (added to the gradient), as torch.optim.SGD does.
  sgd = optax.sgd(learning_rate, momentum=momentum or None)
  if not weight_decay:
    return sgd
  return optax.chain(optax.add_decayed_weights(weight_decay, decay_mask), sgd)


def _momentum(learning_rate, momentum, weight_decay):
  return _sgd(learning_rate, momentum, weight_decay)


def _adam(learning_rate, momentum, weight_decay):
  del momentum, weight_decay  # check_settings refuses a weight decay.
  return optax.adam(learning_rate)


def _adamw(learning_rate, momentum, weight_decay):
  del momentum
  # Decoupled weight decay (Loshchilov & Hutter), masked like the others.
  return optax.adamw(learning_rate, weight_decay=weight_decay,
                     mask=decay_mask)


# Every accepted `config.optimizer`: name -> (learning rate or schedule,
# momentum, weight_decay) -> optax transformation.
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    'sgd': _sgd,  # momentum 0: plain SGD
    'momentum': _momentum,
    'adam': _adam,
    'adamw': _adamw,
}

def check_settings(name: str, momentum: float, weight_decay: float):
  """Raises OptimizerError for settings optimizer `name` cannot use; the
  config's checks and create_optimizer both ask here."""
  if name not in OPTIMIZERS:
    raise OptimizerError(f'unknown optimizer {name!r}; accepted: '
                         f'{", ".join(OPTIMIZERS)}')
  if name == 'momentum' and not momentum > 0:
    raise OptimizerError(f'optimizer momentum needs momentum > 0, got '
                         f'{momentum}; or use optimizer sgd')
  if weight_decay and name not in TAKE_WEIGHT_DECAY:
    raise OptimizerError(
        f'optimizer {name} takes no weight_decay (got {weight_decay}); '
        f'those that do: {", ".join(TAKE_WEIGHT_DECAY)}')


def _warmup_cosine(base_lr, total_steps, warmup_steps):
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=base_lr, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1))


# Every accepted `config.lr_schedule`: name -> (base learning rate, total
# updates, warm-up updates) -> optax schedule. plateau is constant here; its
# cuts are a factor in the optimizer state (create_optimizer).
LR_SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
    'constant': lambda base_lr, total, warmup: optax.constant_schedule(
        base_lr),
    'plateau': lambda base_lr, total, warmup: optax.constant_schedule(
        base_lr),
    'cosine': lambda base_lr, total, warmup: optax.cosine_decay_schedule(
        base_lr, decay_steps=total),
    'warmup_cosine': _warmup_cosine,
}


def create_learning_rate_fn(schedule: str, base_lr: float, total_steps: int,
                            warmup_steps: int) -> optax.Schedule:
  """Returns update -> learning rate for one of LR_SCHEDULES."""
  if schedule not in LR_SCHEDULES:
    raise OptimizerError(f'unknown lr_schedule {schedule!r}; accepted: '
                         f'{", ".join(LR_SCHEDULES)}')
  return LR_SCHEDULES[schedule](base_lr, total_steps, warmup_steps)


def parse_lr_multipliers(text: str) -> list[tuple[str, float]]:
  """'layer[1-4]=0.1,fc=1' -> [('layer[1-4]', 0.1), ('fc', 1.0)]."""
  rules = []
  for item in filter(None, (part.strip() for part in text.split(','))):
    pattern, sep, factor = item.rpartition('=')
    try:
      value = float(factor)
    except ValueError:
      value = -1.0
    if not sep or not pattern or not value >= 0 or value == float('inf'):
      raise OptimizerError(
          f'lr_multipliers item {item!r} is not REGEX=FACTOR with a factor '
          f'>= 0; accepted: e.g. \'layer[1-4]=0.1,fc=1\'')
    rules.append((pattern, value))
  return rules


def _compiled(key: str, pattern: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise OptimizerError(f'{key} {pattern!r} is not a regular expression '
                         f'({e}); accepted: a Python regex over parameter '
                         f'paths such as layer1_0/conv1/kernel') from None


def check_parameter_rules(freeze: str, lr_multipliers: str,
                          paths: list[str]):
  """OptimizerError unless every freeze and lr_multipliers pattern compiles
  and matches at least one of the model's parameter `paths`."""
  patterns = [('freeze', freeze)] if freeze else []
  patterns += [('lr_multipliers', p) for p, _ in
               parse_lr_multipliers(lr_multipliers)]
  for key, pattern in patterns:
    if not any(_compiled(key, pattern).search(p) for p in paths):
      raise OptimizerError(
          f'{key} {pattern!r} matches no parameter of the model; accepted: a '
          f'regex over its parameter paths, e.g. {", ".join(paths[:4])}, ...')


def is_frozen(path: str, freeze: str) -> bool:
  """Whether config.freeze matches the parameter at `path`: the one rule
  the optimizer, the BatchNorm switch and the divergence check share."""
  return bool(freeze) and re.search(freeze, path) is not None


def update_factor(path: str, freeze: str, lr_multipliers: str) -> float:
  """What a parameter's updates are multiplied by: 0 if frozen, else the
  factor of the first lr_multipliers pattern it matches, else 1."""
  if is_frozen(path, freeze):
    return 0.0
  for pattern, factor in parse_lr_multipliers(lr_multipliers):
    if re.search(pattern, path):
      return factor
  return 1.0


def scale_by_parameter(freeze: str, lr_multipliers: str, where: str
                       ) -> optax.GradientTransformation:
  """Multiplies each parameter's gradient or update by update_factor; a
  frozen one becomes exactly 0 (not 0 * value, which is NaN for an inf).
  Stateless: the factors come from the parameter paths, at trace time.

  optax.multi_transform could route frozen parameters to set_to_zero, but
  multipliers would need one inner optimizer per factor; one scaling of the
  updates gives both, and for every optimizer here the update is linear in
  the learning rate, so a factor on the update is a factor on the rate.
  """

  def scale(path, update):
    name = models.parameter_path(path)
    factor = update_factor(name, freeze,
                           '' if where == 'gradients' else lr_multipliers)
    if factor == 1.0:
      return update
    if factor == 0.0:
      return jnp.zeros_like(update)
    return update * jnp.asarray(factor, update.dtype)

  def update_fn(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(),
                                      update_fn)


def create_optimizer(name: str, learning_rate: optax.ScalarOrSchedule,
                     momentum: float = 0.0, weight_decay: float = 0.0,
                     grad_clip_norm: float = 0.0, grad_accum_steps: int = 1,
                     freeze: str = '', lr_multipliers: str = '',
                     plateau: bool = False) -> optax.GradientTransformation:
  """Returns the optax optimizer `name` (one of OPTIMIZERS).

  Args:
    name: a key of OPTIMIZERS.
    learning_rate: a number or a schedule over optimizer updates.
    momentum: for sgd/momentum.
    weight_decay: for the optimizers in TAKE_WEIGHT_DECAY, masked.
    grad_clip_norm: > 0 clips the global gradient norm first.
    grad_accum_steps: > 1 sums that many steps' gradients into one update.
    freeze: a regex over parameter paths (parameter_path): those matched
      are never changed (no gradient, no weight decay, no momentum).
    lr_multipliers: 'REGEX=FACTOR,...': the updates of parameters matched
      (first match wins) are scaled by FACTOR.
    plateau: the updates are also scaled by a factor kept in the optimizer
      state (lr_schedule plateau; set_plateau_factor sets it).
  """
  check_settings(name, momentum, weight_decay)
  tx = OPTIMIZERS[name](learning_rate, momentum, weight_decay)
  if grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  if freeze or lr_multipliers:
    # Frozen gradients are zeroed first, so that they count in no clipping
    # norm; updates are scaled last, after weight decay and momentum.
    tx = optax.chain(*[scale_by_parameter(freeze, '', 'gradients')] * bool(
        freeze), tx, scale_by_parameter(freeze, lr_multipliers, 'updates'))
  if plateau:
    # Every optimizer's update is the learning rate times a direction (and
    # decoupled weight decay times it too): scaling the update scales the
    # rate. The factor is a hyperparameter in the optimizer state, set once
    # per epoch by the training loop (set_plateau_factor).
    tx = optax.chain(tx, optax.inject_hyperparams(optax.scale)(
        step_size=1.0))
  if grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=grad_accum_steps)
  return tx


def plateau_factor(opt_state):
  """The plateau schedule's factor in `opt_state` (1.0 without one)."""
  found = optax.tree_utils.tree_get(opt_state, 'step_size', 1.0)
  return found


def set_plateau_factor(opt_state, factor):
  """`opt_state` with the plateau schedule's factor set to `factor` (an
  array placed as the state is)."""
  return optax.tree_utils.tree_set(opt_state, step_size=factor)
