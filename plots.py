"""Pictures a run leaves in its workdir: learning curves and sample predictions."""

from typing import Sequence

import matplotlib

matplotlib.use('Agg')  # Files only; no display is needed or wanted.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def plot_history(history: Sequence[dict], path: str):
  """Loss and accuracy per epoch, train and test, in two panels."""
  epochs = [h['epoch'] for h in history]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, name in zip(axes, ('loss', 'accuracy')):
    ax.plot(epochs, [h[f'train_{name}'] for h in history], 'o-', label='train')
    ax.plot(epochs, [h[f'test_{name}'] for h in history], 's-', label='test')
    ax.set_xlabel('epoch')
    ax.set_ylabel(name)
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


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
  fig.savefig(path, dpi=100)
  plt.close(fig)
