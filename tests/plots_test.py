"""Tests for plots.py: each picture is written, at its size, from its data."""

import os

import numpy as np
import pytest
from PIL import Image

import plots

HISTORY = [{'epoch': e, 'step': 10 * e, 'train_loss': 1.0 / e,
            'train_accuracy': 0.5 + 0.1 * e, 'train_top5_accuracy': 0.9,
            'test_loss': 1.2 / e, 'test_accuracy': 0.4 + 0.1 * e,
            'test_top5_accuracy': 0.8} for e in (1, 2, 3)]


def _pixels(path):
  with Image.open(path) as image:
    return image.size, np.asarray(image.convert('RGB'))


def test_metric_names_come_from_the_train_keys():
  assert plots.metric_names(HISTORY) == ['loss', 'accuracy', 'top5_accuracy']


def test_history_has_a_panel_per_metric_and_draws_validation(tmp_path):
  plain, validated = str(tmp_path / 'plain.png'), str(tmp_path / 'val.png')
  plots.plot_history(HISTORY, plain)
  plots.plot_history([dict(h, validation_loss=0.1, validation_accuracy=0.2,
                           validation_top5_accuracy=0.3) for h in HISTORY],
                     validated)
  size, without = _pixels(plain)
  assert size == (1500, 400)  # 5 x 4 inches per panel at 100 dpi.
  size, with_validation = _pixels(validated)
  assert size == (1500, 400)
  assert (without != with_validation).any()


def test_predictions_fill_a_five_by_five_grid_even_when_fewer(tmp_path):
  images = np.zeros((3, 8, 8, 1), np.uint8)
  right, wrong = str(tmp_path / 'right.png'), str(tmp_path / 'wrong.png')
  plots.plot_predictions(images, np.array([0, 1, 2]), np.array([0, 1, 2]),
                         ['a', 'b', 'c'], right)
  plots.plot_predictions(images, np.array([0, 1, 2]), np.array([1, 1, 2]),
                         ['a', 'b', 'c'], wrong)
  size, all_right = _pixels(right)
  assert size == (800, 900)
  _, one_wrong = _pixels(wrong)
  red = lambda p: ((p[..., 0] > 200) & (p[..., 1] < 80)).sum()
  assert red(all_right) == 0 and red(one_wrong) > 0  # The miss is red.


def test_sweep_and_confusion_pictures(tmp_path):
  sweep = str(tmp_path / 'sweep.png')
  plots.plot_sweep({'lr=0.1': HISTORY, 'lr=0.2': HISTORY[:2]}, sweep)
  assert _pixels(sweep)[0] == (900, 500)
  confusion = str(tmp_path / 'confusion.png')
  plots.plot_confusion(np.array([[5, 1], [0, 4]]), ['cat', 'dog'], confusion)
  assert _pixels(confusion)[0] == (240, 200)  # (1 + 0.7 n, 0.8 + 0.6 n) in.


def test_pictures_are_moved_in_whole(tmp_path, monkeypatch):
  path = str(tmp_path / 'sweep.png')
  plots.plot_sweep({f'trial_{i:03d}': HISTORY for i in range(3)}, path)
  assert os.listdir(tmp_path) == ['sweep.png']  # No temporary file left.
  size, before = _pixels(path)

  def fail(self, file, **kwargs):
    file.write(b'half a picture')
    raise OSError('No space left on device')

  monkeypatch.setattr('matplotlib.figure.Figure.savefig', fail)
  with pytest.raises(OSError, match='No space'):
    plots.plot_sweep({'trial_000': HISTORY}, path)
  assert os.listdir(tmp_path) == ['sweep.png']
  assert _pixels(path)[0] == size and (_pixels(path)[1] == before).all()
