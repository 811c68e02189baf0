"""Tests for main.py and bad input: one clear line, exit 2, no damage.

Whether a value is refused, and that nothing in the workdir changes, is
checked in-process through train.train_and_evaluate; a few real `main.py`
processes check that each kind of error becomes one `error:` line and exit 2.
"""

import logging as std_logging
import os
import shlex
import subprocess
import sys

import pytest

import conftest
import main
import train
import workdir_files
import config_rules
import data_sources

TIMEOUT = 120


def run_main(workdir, *args, env=None):
  return conftest.run_python(['main.py', f'--workdir={workdir}', *args],
                             env=env, timeout=TIMEOUT)


def tiny_args(data_dir, *overrides):
  return ['--config=configs/default.py', f'--config.data_dir={data_dir}',
          '--config.batch_size=8', '--config.eval_batch_size=20',
          '--config.num_train_steps=24', '--config.checkpoint_every_steps=12',
          *overrides]


def tiny_config(data_dir, **overrides):
  return conftest.tiny_config(
      data_dir, **dict({'num_train_steps': 24, 'checkpoint_every_steps': 12},
                       **overrides))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return conftest.make_idx_dir(str(tmp_path_factory.mktemp('data')),
                               num_train=64, num_test=20)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(tiny_config(data_dir), workdir)
  return workdir


def assert_one_error_line(result, expected, code=2):
  assert result.returncode == code, result.stderr[-3000:]
  errors = conftest.error_lines(result.stderr)
  assert len(errors) == 1, result.stderr[-3000:]
  assert expected in errors[0], errors[0]
  assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('overrides,expected', [
    ({'learning_rate': 0.0}, 'learning_rate must be > 0, got 0'),
    ({'learning_rate': float('nan')},
     'learning_rate must be a finite number, got nan'),
    ({'weight_decay': float('inf')},
     'weight_decay must be a finite number, got inf'),
    ({'batch_size': 0}, 'batch_size must be > 0, got 0'),
    ({'num_epochs': -1}, 'num_epochs must be > 0, got -1'),
    ({'log_every_steps': 0}, 'log_every_steps must be > 0, got 0'),
    ({'checkpoint_every_steps': -5},
     'checkpoint_every_steps must be > 0, got -5'),
    ({'warmup_epochs': -1.0}, 'warmup_epochs must be >= 0, got -1.0'),
    ({'seed': -1}, 'seed must be >= 0, got -1'),
    ({'momentum': 1.5}, 'momentum must be in [0, 1), got 1.5'),
    ({'lr_schedule': 'warmup_cosine', 'warmup_epochs': 5.0},
     'warmup_epochs 5.0 is 40 steps, not shorter than the run (24 steps)'),
    ({'model': 'vit'}, "unknown model 'vit'; accepted: cnn, mlp"),
    ({'optimizer': 'rmsprop'},
     "unknown optimizer 'rmsprop'; accepted: sgd, momentum, adam, adamw"),
    ({'lr_schedule': 'step'}, "unknown lr_schedule 'step'"),
    ({'batch_size': 128}, 'batch_size 128 is larger than the training set'),
])
def test_bad_config_is_refused_and_run_untouched(finished_run, data_dir,
                                                 overrides, expected):
  before = conftest.snapshot(finished_run)
  with pytest.raises((config_rules.ConfigError,
                      data_sources.DataError)) as error:
    train.train_and_evaluate(tiny_config(data_dir, **overrides),
                             finished_run)
  assert expected in str(error.value) and '\n' not in str(error.value)
  assert conftest.snapshot(finished_run) == before


def test_a_refused_config_creates_no_workdir(tmp_path, data_dir):
  workdir = tmp_path / 'new'
  with pytest.raises(config_rules.ConfigError, match='seed must be >= 0'):
    train.train_and_evaluate(tiny_config(data_dir, seed=-1), str(workdir))
  assert not workdir.exists()


def _bad_idx_dir(tmp_path, kind):
  path = conftest.make_idx_dir(str(tmp_path / 'bad'), num_train=64,
                               num_test=20)
  if kind == 'missing':
    os.remove(os.path.join(path, 't10k-images-idx3-ubyte'))
  elif kind == 'magic':
    with open(os.path.join(path, 'train-images-idx3-ubyte'), 'r+b') as f:
      f.write(b'\x12\x34')
  elif kind == 'sizes':
    conftest.write_idx(os.path.join(path, 't10k-images-idx3-ubyte'),
                       [[[0] * 20] * 20] * 20)
  elif kind == 'labels':
    conftest.write_idx(os.path.join(path, 'train-labels-idx1-ubyte'),
                       [12] * 64)
  return path


@pytest.mark.parametrize('kind,expected', [
    ('missing', 'is missing t10k-images-idx3-ubyte'),
    ('magic', 'bad IDX magic number'),
    ('sizes', 'train images are (28, 28, 1) but test images are (20, 20, 1)'),
    ('labels', "labels go up to 12, but dataset 'fashion_mnist' has 10"),
])
def test_bad_data_dir_is_named_and_run_untouched(tmp_path, finished_run,
                                                 kind, expected):
  before = conftest.snapshot(finished_run)
  bad = _bad_idx_dir(tmp_path, kind)
  with pytest.raises(data_sources.DataError) as error:
    train.train_and_evaluate(
        tiny_config(bad, dataset='fashion_mnist'), finished_run)
  assert expected in str(error.value) and bad in str(error.value)
  assert conftest.snapshot(finished_run) == before


def test_workdir_that_is_a_file(tmp_path, data_dir):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a folder')
  with pytest.raises(workdir_files.WorkdirError,
                     match='is a file; give a folder'):
    train.train_and_evaluate(tiny_config(data_dir), str(blocker))
  with pytest.raises(workdir_files.WorkdirError, match='cannot be written'):
    train.train_and_evaluate(tiny_config(data_dir), str(blocker / 'run'))
  assert blocker.read_text() == 'not a folder'


# A real process (about 6 s): make test-all and CI.
@pytest.mark.slow
def test_eval_batch_larger_than_the_test_set_evaluates_every_example_once(
    tmp_path, data_dir):
  summary = train.train_and_evaluate(
      tiny_config(data_dir, eval_batch_size=1000), str(tmp_path / 'w'))
  reference = train.train_and_evaluate(
      tiny_config(data_dir, eval_batch_size=20), str(tmp_path / 'r'))
  assert summary['test_accuracy'] == reference['test_accuracy']


# The CLI: each kind of failure is one line and the right exit code.
@pytest.mark.parametrize('args,expected', [
    (['--config.learning_rat=0.1'],
     "unknown config key 'learning_rat' (did you mean 'learning_rate'?)"),
    (['--config.batch_size=abc'], 'flag --config.batch_size=abc'),
    (['--config.learning_rate=nan'], 'learning_rate must be a finite number'),
    (['--config.data_dir=/no/such/folder'],
     "data_dir '/no/such/folder' does not exist"),
    (['--config.model_kwargs.stem=small'],
     "unknown config key 'model_kwargs.stem' for model cnn; accepted: "
     "model_kwargs.dropout_rate, model_kwargs.dtype"),
])
def test_cli_bad_config_one_line_exit_2(finished_run, data_dir, args,
                                        expected):
  before = conftest.snapshot(finished_run)
  result = run_main(finished_run, *tiny_args(data_dir, *args))
  assert_one_error_line(result, expected)
  assert conftest.snapshot(finished_run) == before


def test_unreadable_image_is_named_before_anything_is_made(tmp_path):
  # In-process: the CLI's mapping of DataError to one line and exit 2 is
  # tested above (a missing data_dir).
  folder = conftest.make_image_folder(str(tmp_path / 'images'))
  bad = os.path.join(folder, 'train', 'dog', 'photo.jpg')
  with open(bad, 'wb') as f:
    f.write(b'not a jpeg')
  workdir = str(tmp_path / 'w')
  with pytest.raises(data_sources.DataError) as e:
    train.train_and_evaluate(tiny_config(folder, dataset='custom'), workdir)
  message = str(e.value)
  assert '\n' not in message and 'skip_bad_images' in message
  assert f'1 unreadable image file(s) under {folder}: {bad} (' in message
  assert not os.path.exists(workdir)  # Refused before anything was made.


@pytest.mark.parametrize('text,expected', [
    (None, 'No such file or directory'),
    ('def get_config(:\n', 'line 1: invalid syntax'),
    ('x = 1\n', 'defines no get_config()'),
    ('def get_config():\n  return 5\n',
     'get_config() returned int, not an ml_collections.ConfigDict'),
])
def test_cli_bad_config_file_one_line_exit_2(tmp_path, text, expected):
  path = tmp_path / 'config.py'
  if text is not None:
    path.write_text(text)
  result = run_main(str(tmp_path / 'w'), f'--config={path}')
  assert_one_error_line(result, expected)
  assert not os.path.exists(tmp_path / 'w')


@pytest.mark.slow  # A real process with a 1 MiB file-size limit: make test-all.
def test_full_disk_keeps_earlier_checkpoints(tmp_path, data_dir):
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(tiny_config(data_dir), workdir)
  longer = tiny_args(data_dir, '--config.num_train_steps=48')
  # Files may not grow past 1 MiB: the checkpoint's ~6 MiB array file fails
  # the way it would on a full disk (SIGXFSZ ignored, so writes get EFBIG).
  command = ' '.join(shlex.quote(a) for a in [
      sys.executable, 'main.py', f'--workdir={workdir}', *longer])
  result = subprocess.run(
      ['bash', '-c', f'trap "" XFSZ; ulimit -f 1024; exec {command}'],
      cwd=conftest.ROOT, capture_output=True, text=True, timeout=TIMEOUT)
  assert result.returncode == 1, result.stderr[-3000:]
  errors = conftest.error_lines(result.stderr)
  assert len(errors) == 1 and 'could not write a checkpoint' in errors[0], (
      result.stderr[-3000:])
  # Orbax's and TensorStore's tracebacks of the same failure are left out.
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  summary = train.train_and_evaluate(
      tiny_config(data_dir, num_train_steps=48), workdir)
  assert summary['history'][0]['step'] == 8  # Kept from the first session.


@pytest.mark.parametrize('name, path', [
    ('asyncio', '/usr/lib/python3/asyncio/base_events.py'),
    ('absl', '/site-packages/orbax/checkpoint/_src/futures/future.py')])
def test_library_errors_are_logged_in_one_line(name, path):
  try:
    raise ValueError('OUT_OF_RANGE: file too large')
  except ValueError:
    exc_info = sys.exc_info()
  record = std_logging.LogRecord(name, std_logging.ERROR, path, 1,
                                 'Task exception was never retrieved\n%s',
                                 ('future: <Task finished>',), exc_info)
  assert main._quiet_library_logs(record)
  text = std_logging.Formatter().format(record)
  assert text == 'Task exception was never retrieved'
  ours = std_logging.LogRecord('absl', std_logging.ERROR, '/work/train.py', 1,
                               'ours', None, exc_info)
  assert main._quiet_library_logs(ours) and ours.exc_info  # Left as it was.


# A real process (about 5 s): make test-all and CI.
@pytest.mark.slow
def test_model_kwargs_flag_takes_a_key_the_config_file_lacks(tmp_path,
                                                             data_dir):
  workdir = str(tmp_path / 'w')
  result = run_main(workdir, *tiny_args(
      data_dir, '--config.model=mlp', '--config.model_kwargs.hidden=16',
      '--config.num_train_steps=2'))
  assert result.returncode == 0, result.stderr[-3000:]
  saved = workdir_files.read_json(workdir, workdir_files.CONFIG)
  assert saved['model_kwargs']['hidden'] == 16


def test_orbax_warning_of_each_unscored_checkpoint_is_dropped():
  record = std_logging.LogRecord(
      'absl', std_logging.WARNING,
      '/site-packages/orbax/checkpoint/checkpoint_manager.py', 1,
      main._UNSCORED_SAVE, None, None)
  assert not main._quiet_library_logs(record)
  record.levelno = std_logging.ERROR
  record.msg = 'Something else'
  assert main._quiet_library_logs(record)


@pytest.mark.parametrize('fault,expected', [
    ('int:start:0', 'stopped: SIGINT outside training steps; run the same '
                    'command again to continue from the last checkpoint'),
    ('int2:start:0', 'stopped: SIGINT again; exiting now')])
def test_ctrl_c_during_start_up_is_one_line_and_resumable(tmp_path, data_dir,
                                                          fault, expected):
  workdir = str(tmp_path / 'w')
  result = run_main(workdir, *tiny_args(data_dir),
                    env={**os.environ, 'TRAINER_FAULT': fault})
  assert result.returncode == 75, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == expected
  assert not os.path.exists(workdir)


def test_a_config_file_that_raises_is_named_with_its_error(tmp_path):
  result = run_main(str(tmp_path / 'w'), '--mode=eval',
                    f'--config=configs/workdir.py:{tmp_path}/nothing')
  assert_one_error_line(
      result, f'cannot load --config=configs/workdir.py:{tmp_path}/nothing: '
              f'workdir_files.WorkdirError: {tmp_path}/nothing has no '
              f'config.json: not a training workdir')
