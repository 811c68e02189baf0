"""Tests for main.py: bad input gets one clear line, exit 2, and no damage."""

import os
import resource
import signal

import pytest

import conftest

TIMEOUT = 120


def run_main(workdir, *args, env=None, preexec_fn=None):
  return conftest.run_python(['main.py', f'--workdir={workdir}', *args],
                             env=env, timeout=TIMEOUT, preexec_fn=preexec_fn)


def tiny_args(data_dir, *overrides):
  return ['--config=configs/default.py', f'--config.data_dir={data_dir}',
          '--config.batch_size=8', '--config.eval_batch_size=20',
          '--config.num_train_steps=24', '--config.checkpoint_every_steps=12',
          *overrides]


def snapshot(folder):
  """Every file under `folder` with its size and modification time."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      out[path] = (os.path.getsize(path), os.path.getmtime(path))
  return out


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return conftest.make_idx_dir(str(tmp_path_factory.mktemp('data')),
                               num_train=64, num_test=20)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('run'))
  result = run_main(workdir, *tiny_args(data_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def _bad_idx_dir(tmp_path, kind):
  path = conftest.make_idx_dir(str(tmp_path / 'bad'), num_train=64,
                               num_test=20)
  if kind == 'missing':
    os.remove(os.path.join(path, 't10k-images-idx3-ubyte'))
  else:
    with open(os.path.join(path, 'train-images-idx3-ubyte'), 'r+b') as f:
      f.write(b'\x12\x34')  # Corrupt the magic number.
  return path


@pytest.mark.parametrize('overrides,env,expected', [
    (['--config.learning_rat=0.1'], {},
     "unknown config key 'learning_rat' (did you mean 'learning_rate'?)"),
    (['--config.learning_rate=0'], {}, 'learning_rate must be > 0, got 0'),
    (['--config.learning_rate=-0.5'], {},
     'learning_rate must be > 0, got -0.5'),
    (['--config.batch_size=0'], {}, 'batch_size must be > 0, got 0'),
    (['--config.num_epochs=-1'], {}, 'num_epochs must be > 0, got -1'),
    (['--config.batch_size=30'],
     {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'},
     'batch_size 30 is not divisible by the 4 devices'),
    (['--config.dataset=no_such_set', '--config.data_dir='], {},
     "unknown dataset 'no_such_set'"),
    (['--config.model=vit'], {}, "unknown model 'vit'; accepted: cnn, mlp"),
    (['--config.optimizer=rmsprop'], {},
     "unknown optimizer 'rmsprop'; accepted: sgd, momentum, adam, adamw"),
    (['--config.lr_schedule=step'], {}, "unknown lr_schedule 'step'"),
    (['--config.data_dir=/no/such/folder'], {},
     "data_dir '/no/such/folder' does not exist"),
    (['--config.batch_size=abc'], {}, 'flag --config.batch_size=abc'),
])
def test_bad_config_one_line_exit_2_run_untouched(finished_run, data_dir,
                                                  overrides, env, expected):
  before = snapshot(finished_run)
  result = run_main(finished_run, *tiny_args(data_dir, *overrides), env=env)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, result.stderr[-3000:]
  assert expected in errors[0]
  assert 'Traceback' not in result.stderr
  assert snapshot(finished_run) == before


@pytest.mark.parametrize('kind,expected', [
    ('missing', 'is missing t10k-images-idx3-ubyte'),
    ('malformed', 'bad IDX magic number'),
])
def test_bad_data_dir_is_named(tmp_path, finished_run, kind, expected):
  before = snapshot(finished_run)
  bad = _bad_idx_dir(tmp_path, kind)
  result = run_main(finished_run, *tiny_args(bad))
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and expected in errors[0] and bad in errors[0]
  assert snapshot(finished_run) == before


def test_unwritable_workdir(tmp_path, data_dir):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a folder')
  result = run_main(str(blocker / 'run'), *tiny_args(data_dir))
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'cannot be written' in errors[0]


def test_missing_config_file(tmp_path):
  result = run_main(str(tmp_path / 'w'), '--config=configs/nope.py')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: cannot load --config')


def _limit_file_size():
  # Files may not grow past 1 MiB: the checkpoint's ~6 MiB array file fails
  # the way it would on a full disk. Ignore SIGXFSZ so writes get EFBIG.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_full_disk_keeps_earlier_checkpoints(tmp_path, data_dir):
  workdir = str(tmp_path / 'w')
  assert run_main(workdir, *tiny_args(data_dir)).returncode == 0
  longer = tiny_args(data_dir, '--config.num_train_steps=48')
  result = run_main(workdir, *longer, preexec_fn=_limit_file_size)
  assert result.returncode == 1, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'could not write a checkpoint' in errors[0]
  resumed = run_main(workdir, *longer)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resumed from step 24' in resumed.stderr
