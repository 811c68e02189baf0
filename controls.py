"""Training controls: class weights, early stopping and the plateau schedule.

Early stopping and the plateau schedule decide once per epoch from the
epoch records (`history`), which every checkpoint holds: a resumed run
takes the same decisions as an uninterrupted one. Their learning-rate
factor lives in the optimizer state (optimizers.PLATEAU_KEY, fed by
optax.inject_hyperparams), so it is checkpointed with it.
"""

import math
from typing import Optional, Sequence

import numpy as np


class ControlError(ValueError):
  """A control setting that cannot be used; the message names it."""


def parse_class_weights(text: str) -> Optional[object]:
  """config.class_weights -> None (''), 'balanced', or a tuple of floats.

  Raises ControlError naming the text and what is accepted.
  """
  if not text:
    return None
  if text == 'balanced':
    return text
  try:
    weights = tuple(float(w) for w in text.split(','))
  except ValueError:
    weights = ()
  if not weights or not all(math.isfinite(w) and w >= 0 for w in weights) or (
      not any(weights)):
    raise ControlError(f'class_weights {text!r} is not usable; accepted: '
                       f"'' (none), balanced, or one number >= 0 per class, "
                       f"e.g. '1,1,10'")
  return weights


def class_weights(text: str, labels: np.ndarray,
                  num_classes: int) -> Optional[tuple]:
  """The per-class loss weights of config.class_weights for a training
  split with these labels: balanced is N / (num_classes * count), as
  scikit-learn's; a class with no example gets weight 0."""
  parsed = parse_class_weights(text)
  if parsed is None:
    return None
  if parsed == 'balanced':
    counts = np.bincount(labels, minlength=num_classes)
    return tuple(float(len(labels) / (num_classes * c)) if c else 0.0
                 for c in counts)
  if len(parsed) != num_classes:
    raise ControlError(f'class_weights {text!r} gives {len(parsed)} weights '
                       f'for {num_classes} classes; accepted: balanced, or '
                       f'one number per class')
  return parsed


def selection_metric(has_validation: bool) -> str:
  """What the best checkpoint is chosen on, and early stopping and the
  plateau schedule watch by default."""
  return 'validation_accuracy' if has_validation else 'test_accuracy'


def metric_names(has_validation: bool) -> list[str]:
  """The epoch metrics a run has to watch."""
  splits = ['validation', 'test'] if has_validation else ['test']
  return [f'{split}_{name}' for split in splits
          for name in ('accuracy', 'top5_accuracy', 'loss')]


def _improvements(history: Sequence[dict], metric: str, min_delta: float):
  """For each epoch record: whether `metric` improved on the best so far by
  more than min_delta (lower is better for a loss)."""
  sign = -1.0 if metric.endswith('loss') else 1.0
  best = -math.inf
  for record in history:
    if metric not in record:
      continue
    value = sign * record[metric]
    improved = value > best + min_delta
    best = max(best, value)
    yield improved


def epochs_without_improvement(history: Sequence[dict], metric: str,
                               min_delta: float = 0.0) -> int:
  since = 0
  for improved in _improvements(history, metric, min_delta):
    since = 0 if improved else since + 1
  return since


def should_stop(history: Sequence[dict], metric: str, patience: int,
                min_delta: float = 0.0) -> bool:
  """Early stopping: `patience` epochs (> 0) without improvement."""
  return patience > 0 and epochs_without_improvement(
      history, metric, min_delta) >= patience


def plateau_reductions(history: Sequence[dict], metric: str, patience: int,
                       min_delta: float = 0.0) -> int:
  """How many times the plateau schedule has cut the learning rate: once
  each time `patience` epochs pass without improvement (the count then
  starts again, as Keras's ReduceLROnPlateau without cooldown)."""
  cuts = since = 0
  for improved in _improvements(history, metric, min_delta):
    since = 0 if improved else since + 1
    if since >= patience:
      cuts, since = cuts + 1, 0
  return cuts
