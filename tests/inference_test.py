"""Tests for inference.py: eval and predict on a run trained in-process, and
one `main.py --mode=predict` process for the command line."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

import config_rules
import conftest
import image_folder
import inference
import input_pipeline
import train
import workdir_files

TIMEOUT = 300
FASHION_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')


@pytest.fixture(scope='module')
def trained(tmp_path_factory, small_data_dir):
  workdir = str(tmp_path_factory.mktemp('run'))
  config = conftest.tiny_config(small_data_dir, dataset='fashion_mnist',
                                num_train_steps=80, max_checkpoints_to_keep=1)
  train.train_and_evaluate(config, workdir)
  return workdir, workdir_files.load_config(workdir)


def test_eval_equals_final_training_metrics_exactly(trained, monkeypatch):
  workdir, config = trained
  passes = []
  eval_batches = input_pipeline.eval_batches
  monkeypatch.setattr(input_pipeline, 'eval_batches',
                      lambda *a, **k: passes.append(1) or eval_batches(*a, **k))
  report = inference.evaluate_checkpoint(config, workdir, 'latest')
  assert len(passes) == 1  # The metrics and the confusion matrix: one pass.
  assert report == json.load(open(os.path.join(workdir, 'eval.json')))
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert report['checkpoint_step'] == 80
  assert report['loss'] == summary['test_loss']
  assert report['accuracy'] == summary['test_accuracy']
  confusion = np.array(report['confusion_matrix'])
  assert confusion.shape == (10, 10) and confusion.sum() == 50
  assert np.trace(confusion) / 50 == pytest.approx(report['accuracy'])
  assert set(report['per_class']) == set(FASHION_NAMES)
  assert os.path.isfile(os.path.join(workdir, 'confusion.png'))
  assert 'accuracy' in inference.format_report(report)


def test_best_checkpoint_is_kept_and_evaluates_to_its_score(trained):
  workdir, config = trained
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  best_step = summary['best_step']
  # max_checkpoints_to_keep=1 keeps the latest; the best survives as well.
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(best_step)))
  report = inference.evaluate_checkpoint(config, workdir, 'best')
  assert report['checkpoint_step'] == best_step
  assert report['accuracy'] == summary['best_test_accuracy']
  # Eval and predict use the best checkpoint unless told otherwise.
  assert inference.evaluate_checkpoint(config, workdir) == report


def test_bad_checkpoint_name_is_refused(trained):
  workdir, config = trained
  with pytest.raises(inference.InferenceError,
                     match="--checkpoint='nope': accepted are latest, best"):
    inference.evaluate_checkpoint(config, workdir, 'nope')


def _save(path, array, mode=None, **kwargs):
  Image.fromarray(array, mode).save(path, **kwargs)
  return str(path)


@pytest.fixture
def images(tmp_path):
  rng = np.random.default_rng(0)
  good = {
      'big_color.png': _save(tmp_path / 'big_color.png', rng.integers(
          0, 255, (64, 48, 3), dtype=np.uint8)),
      'gray.jpg': _save(tmp_path / 'gray.jpg', np.zeros((28, 28), np.uint8)),
      'rgba.png': _save(tmp_path / 'rgba.png', rng.integers(
          0, 255, (30, 30, 4), dtype=np.uint8)),
      'sixteen_bit.png': _save(tmp_path / 'sixteen_bit.png', np.full(
          (28, 28), 40000, np.uint16)),
      'anim.gif': _save(tmp_path / 'anim.gif', rng.integers(
          0, 255, (28, 28), dtype=np.uint8)),
  }
  (tmp_path / 'empty.png').write_bytes(b'')
  (tmp_path / 'notes.txt').write_text('not an image')
  bad = {'empty.png': str(tmp_path / 'empty.png'),
         'notes.txt': str(tmp_path / 'notes.txt')}
  return good, bad


def test_sixteen_bit_images_are_scaled_not_clipped(images):
  good, _ = images
  array = inference.load_image(good['sixteen_bit.png'], (28, 28, 1))
  assert array.dtype == np.uint8
  np.testing.assert_array_equal(array, round(40000 / 65535 * 255))


def test_huge_images_are_refused_by_size(images, monkeypatch):
  good, _ = images
  monkeypatch.setattr(image_folder, 'MAX_IMAGE_PIXELS', 1000)
  with pytest.raises(ValueError, match='48x64 pixels is more than the 1,000 accepted'):
    inference.load_image(good['big_color.png'], (28, 28, 1))


def test_predict_reports_top3_and_names_bad_files(trained, images):
  workdir, config = trained
  good, bad = images
  paths = list(good.values()) + list(bad.values())
  lines, failed = inference.predict_files(config, workdir, paths)
  assert failed == list(bad.values())
  assert len(lines) == len(paths)
  for path, line in zip(paths, lines):
    assert line.startswith(f'{path}: ')
    if path in failed:
      assert 'error: cannot read image' in line and 'accepted:' in line
      continue
    parts = line.split(': ', 1)[1].split(', ')
    probs = [float(p.rsplit(' ', 1)[1]) for p in parts]
    assert len(parts) == 3 and probs == sorted(probs, reverse=True)
    assert all(p.rsplit(' ', 1)[0] in FASHION_NAMES for p in parts)
  assert 'the file is empty' in lines[paths.index(bad['empty.png'])]


def test_predict_takes_folders_in_batches_and_writes_a_csv(
    trained, images, tmp_path, monkeypatch):
  workdir, config = trained
  good, bad = images
  folder = os.path.dirname(good['gray.jpg'])
  monkeypatch.setattr(inference, 'PREDICT_BATCH', 2)  # Several batches.
  output = str(tmp_path / 'preds.csv')
  lines, failed = inference.predict_files(config, workdir, [folder],
                                          top_k=5, output=output)
  listed = inference.expand_paths([folder])
  # Image extensions in any case, recursively; notes.txt is not listed.
  assert bad['notes.txt'] not in listed and good['gray.jpg'] in listed
  assert failed == [p for p in listed if p in bad.values()]
  with open(output, newline='') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['path'] + sum(([f'class_{i}', f'prob_{i}']
                                    for i in range(1, 6)), []) + ['error']
  assert [r[0] for r in rows[1:]] == listed
  for row in rows[1:]:
    if row[0] in failed:
      assert row[1:11] == [''] * 10 and row[11].startswith('cannot read')
    else:
      assert row[1] in FASHION_NAMES and row[11] == ''
      assert float(row[2]) >= float(row[4])
  # The same probabilities as file by file.
  alone, _ = inference.predict_files(config, workdir, [good['gray.jpg']],
                                     top_k=5)
  assert alone[0] in lines


@pytest.mark.parametrize('top_k,output,message', [
    (0, '', '--top_k=0: accepted: 1 to the run\'s 10 classes'),
    (11, '', '--top_k=11'),
    (3, '/no/such/folder/p.csv', '--output=/no/such/folder/p.csv: '
     'accepted: a file in an existing folder'),
])
def test_bad_predict_arguments_are_named(trained, images, top_k, output,
                                         message):
  workdir, config = trained
  good, _ = images
  with pytest.raises(inference.InferenceError) as e:
    inference.predict_files(config, workdir, [good['gray.jpg']], top_k=top_k,
                            output=output)
  assert str(e.value).startswith(message)


def test_eval_dir_scores_a_new_labelled_folder(trained, tmp_path):
  workdir, config = trained
  folder = tmp_path / 'new'
  rng = np.random.default_rng(5)
  for name, count in (('Trouser', 2), ('Bag', 3)):
    (folder / name / 'sub').mkdir(parents=True)
    for i in range(count):
      _save(folder / name / 'sub' / f'{i}.PNG',
            rng.integers(0, 255, (40, 30), dtype=np.uint8))
  report = inference.evaluate_checkpoint(config, workdir,
                                         eval_dir=str(folder))
  assert report['examples'] == 5 and report['split'] == str(folder)
  assert report['per_class']['Trouser']['examples'] == 2
  assert report['per_class']['Bag']['examples'] == 3
  assert report['per_class']['Sandal']['examples'] == 0
  (folder / 'Cat').mkdir()
  with pytest.raises(inference.InferenceError) as e:
    inference.evaluate_checkpoint(config, workdir, eval_dir=str(folder))
  assert str(e.value).startswith(
      f"--eval_dir={folder}: class folders ['Cat'] are not among the run's "
      f"classes; accepted: folders named ['T-shirt/top', 'Trouser'")


def test_predict_command_line_exit_codes(trained, images):
  workdir, _ = trained
  good, bad = images
  ok = conftest.run_python(['main.py', '--mode=predict',
                            f'--workdir={workdir}', good['gray.jpg']],
                           timeout=TIMEOUT)
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert ok.stdout.startswith(f'{good["gray.jpg"]}: ')
  mixed = conftest.run_python(['main.py', '--mode=predict',
                               f'--workdir={workdir}', bad['notes.txt'],
                               good['gray.jpg']], timeout=TIMEOUT)
  assert mixed.returncode == 1
  lines = mixed.stdout.strip().splitlines()
  assert lines[0].startswith(f'{bad["notes.txt"]}: error: cannot read image')
  assert lines[1].startswith(f'{good["gray.jpg"]}: ')


def test_eval_overrides_the_run_cannot_honour_are_one_line(trained):
  workdir, config = trained
  config.eval_batch_size = 0
  with pytest.raises(config_rules.ConfigError,
                     match='eval_batch_size must be > 0, got 0'):
    inference.evaluate_checkpoint(config, workdir)


def test_eval_with_another_image_size_is_refused(tmp_path):
  data = conftest.make_image_folder(str(tmp_path / 'photos'))
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(conftest.tiny_config(
      data, num_train_steps=2, batch_size=4, eval_batch_size=9), workdir)
  config = workdir_files.load_config(workdir)
  config.image_size = 16
  with pytest.raises(inference.InferenceError,
                     match=r'shape \[16, 16, 3\], but the model was trained '
                           r'on \[12, 10, 3\]'):
    inference.evaluate_checkpoint(config, workdir)
