"""Tests for inference.py via main.py --mode=eval/predict on a real run."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import conftest

TIMEOUT = 300


def run_main(*args):
  return conftest.run_python(['main.py', *args], timeout=TIMEOUT)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, small_data_dir):
  data = small_data_dir
  workdir = str(tmp_path_factory.mktemp('run'))
  result = run_main(f'--workdir={workdir}', '--config=configs/default.py',
                    '--config.dataset=fashion_mnist',
                    f'--config.data_dir={data}', '--config.batch_size=8',
                    '--config.eval_batch_size=20',
                    '--config.num_train_steps=80',
                    '--config.checkpoint_every_steps=24',
                    '--config.max_checkpoints_to_keep=1')
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, data


def test_eval_equals_final_training_metrics_exactly(trained):
  workdir, _ = trained
  result = run_main('--mode=eval', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.load(open(os.path.join(workdir, 'eval.json')))
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert report['checkpoint_step'] == 80
  assert report['loss'] == summary['test_loss']
  assert report['accuracy'] == summary['test_accuracy']
  confusion = np.array(report['confusion_matrix'])
  assert confusion.shape == (10, 10) and confusion.sum() == 50
  assert np.trace(confusion) / 50 == pytest.approx(report['accuracy'])
  assert set(report['per_class']) == {'T-shirt/top', 'Trouser', 'Pullover',
                                      'Dress', 'Coat', 'Sandal', 'Shirt',
                                      'Sneaker', 'Bag', 'Ankle boot'}
  assert os.path.isfile(os.path.join(workdir, 'confusion.png'))
  assert 'accuracy' in result.stdout


def test_best_checkpoint_is_kept_and_evaluates_to_its_score(trained):
  workdir, _ = trained
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  best_step = summary['best_step']
  # max_checkpoints_to_keep=1 keeps the latest; the best survives as well.
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(best_step)))
  result = run_main('--mode=eval', f'--workdir={workdir}',
                    '--checkpoint=best')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.load(open(os.path.join(workdir, 'eval.json')))
  assert report['checkpoint_step'] == best_step
  assert report['accuracy'] == summary['best_test_accuracy']


def test_bad_checkpoint_name_is_refused(trained):
  workdir, _ = trained
  result = run_main('--mode=eval', f'--workdir={workdir}',
                    '--checkpoint=nope')
  assert result.returncode == 2
  assert "--checkpoint='nope': accepted are latest, best" in result.stderr


def test_predict_reports_top3_and_bad_files(trained, tmp_path):
  workdir, _ = trained
  big_color = tmp_path / 'big_color.png'
  Image.fromarray(np.random.default_rng(0).integers(
      0, 255, (64, 48, 3), dtype=np.uint8)).save(big_color)
  gray = tmp_path / 'gray.jpg'
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(gray)
  bogus = tmp_path / 'notes.txt'
  bogus.write_text('not an image')
  result = run_main('--mode=predict', f'--workdir={workdir}',
                    str(big_color), str(bogus), str(gray))
  assert result.returncode == 1
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 3
  assert lines[0].startswith(f'{big_color}: ')
  assert lines[1].startswith(f'{bogus}: error: cannot read image')
  assert lines[2].startswith(f'{gray}: ')
  for line in (lines[0], lines[2]):
    parts = line.split(': ', 1)[1].split(', ')
    assert len(parts) == 3
    probs = [float(p.rsplit(' ', 1)[1]) for p in parts]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3
    names = [p.rsplit(' ', 1)[0] for p in parts]
    assert all(n in ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                     'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
               for n in names)


def test_predict_of_good_images_exits_0(trained, tmp_path):
  workdir, _ = trained
  path = tmp_path / 'x.png'
  Image.fromarray(np.full((30, 30), 200, np.uint8)).save(path)
  result = run_main('--mode=predict', f'--workdir={workdir}', str(path))
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith(f'{path}: ')
