"""Pictures a run leaves in its workdir: learning curves and sample predictions."""

import logging
from typing import Sequence

import matplotlib

matplotlib.use('Agg')  # Files only; no display is needed or wanted.
# Its DEBUG lines (hundreds per figure: font lookups) would pass through
# absl's handler at --verbosity=1.
logging.getLogger('matplotlib').setLevel(logging.INFO)
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

import workdir_files


SPLITS = (('train', 'o-'), ('validation', '^-'), ('test', 's-'))


def _save(fig, path: str):
  """Writes the figure aside and moves it in: the workers of one sweep may
  draw its picture at once, and a reader (or a crash) never leaves half a
  PNG in place of the last whole one."""
  try:
    with workdir_files.replaced(path, 'wb') as f:
      fig.savefig(f, dpi=100, format='png')
  finally:
    plt.close(fig)


def metric_names(history: Sequence[dict]) -> list[str]:
  """The metrics a history holds: 'loss', 'accuracy', ... of any split (a
  record of step 0, before training, has no train_ ones)."""
  names = []
  for record in history:
    for key in record:
      split, _, name = key.partition('_')
      if split in dict(SPLITS) and name and name not in names:
        names.append(name)
  return names


def plot_history(history: Sequence[dict], path: str):
  """Every metric per epoch, train, validation and test, one panel each."""
  names = metric_names(history)
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4),
                           squeeze=False)
  for ax, name in zip(axes[0], names):
    for split, marker in SPLITS:
      points = [(h['epoch'], h[f'{split}_{name}']) for h in history
                if f'{split}_{name}' in h]
      if points:
        ax.plot(*zip(*points), marker, label=split)
    ax.set_xlabel('epoch')
    ax.set_ylabel(name)
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  _save(fig, path)


def plot_predictions(images: np.ndarray, labels: np.ndarray,
                     predictions: np.ndarray, class_names: Sequence[str],
                     path: str):
  """A 5x5 grid of test images titled with the prediction; misses in red."""
  fig, axes = plt.subplots(5, 5, figsize=(8, 9))
  for i, ax in enumerate(axes.flat):
    ax.axis('off')
    if i >= len(images):
      continue
    image = images[i]
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
              cmap='gray' if image.shape[-1] == 1 else None)
    pred, true = int(predictions[i]), int(labels[i])
    if pred == true:
      ax.set_title(class_names[pred], fontsize=9)
    else:
      ax.set_title(f'{class_names[pred]} (true: {class_names[true]})',
                   fontsize=8, color='red')
  fig.suptitle('Test predictions (red: wrong)')
  fig.tight_layout()
  _save(fig, path)


def plot_sweep(histories: dict, path: str):
  """Accuracy per epoch of every finished trial in one chart: validation
  accuracy if the trials hold out a validation split, else test."""
  split = 'validation' if any(
      'validation_accuracy' in h[0] for h in histories.values() if h) else (
          'test')
  fig, ax = plt.subplots(figsize=(9, 5))
  for name, history in histories.items():
    ax.plot([h['epoch'] for h in history],
            [h.get(f'{split}_accuracy', np.nan) for h in history], 'o-',
            label=name)
  ax.set_xlabel('epoch')
  ax.set_ylabel(f'{split} accuracy')
  ax.set_title(f'Sweep: {split} accuracy per epoch')
  ax.grid(alpha=0.3)
  if histories:
    ax.legend(fontsize=8, loc='lower right')
  fig.tight_layout()
  _save(fig, path)


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str],
                   path: str):
  """Confusion matrix: rows true class, columns predicted, counts shown."""
  n = len(class_names)
  fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
  ax.imshow(confusion, cmap='Blues')
  ax.set_xticks(range(n), class_names, rotation=45, ha='right', fontsize=8)
  ax.set_yticks(range(n), class_names, fontsize=8)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  top = confusion.max() or 1
  for i in range(n):
    for j in range(n):
      ax.text(j, i, str(confusion[i, j]), ha='center', va='center',
              fontsize=7, color='white' if confusion[i, j] > top / 2
              else 'black')
  ax.set_title('Confusion matrix (test split)')
  fig.tight_layout()
  _save(fig, path)
