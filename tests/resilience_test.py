"""What needs a real process: SIGKILL at chosen points, signals from
outside, a second trainer. Every subprocess is bounded by a timeout.

The reference is one uninterrupted run; an interrupted-then-resumed run must
match it bit for bit (parameters, every metric float, TensorBoard points).
Damaged checkpoints, refused configs and divergence need no process of their
own: see checkpointing_test.py and train_test.py.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

import conftest
import train
import workdir_files

TIMEOUT = 240  # Seconds; a hung run fails the test instead of blocking CI.
TOTAL_STEPS = 96  # 256 examples / batch 8 = 32 steps per epoch: 3 epochs.


def main_args(workdir, data_dir, *overrides):
  return ['main.py', f'--workdir={workdir}',
          '--config=configs/default.py', f'--config.data_dir={data_dir}',
          '--config.batch_size=8', '--config.eval_batch_size=20',
          f'--config.num_train_steps={TOTAL_STEPS}',
          '--config.log_every_steps=10', '--config.checkpoint_every_steps=24',
          '--config.max_checkpoints_to_keep=10', *overrides]


def run_main(workdir, data_dir, *overrides, env=None, timeout=TIMEOUT):
  return conftest.run_python(main_args(workdir, data_dir, *overrides),
                             env=env, timeout=timeout)


@pytest.fixture(scope='module')
def data_dir(small_data_dir):
  return small_data_dir


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir):
  """The uninterrupted run, in this process (same XLA programs as main.py)."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  config = conftest.tiny_config(data_dir, num_train_steps=TOTAL_STEPS)
  train.train_and_evaluate(config, workdir)
  return workdir


def assert_same_run(workdir, reference):
  conftest.assert_same_run(workdir, reference, TOTAL_STEPS)


def kill_and_resume(workdir, data_dir, point, step):
  killed = run_main(workdir, data_dir,
                    env={'TRAINER_FAULT': f'kill:{point}:{step}'})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  # Resumed in this process: what matters is what the killed one left.
  train.train_and_evaluate(
      conftest.tiny_config(data_dir, num_train_steps=TOTAL_STEPS), workdir)


@pytest.mark.parametrize('point,step', [
    ('step', 30),        # Mid-interval, after the step was dispatched.
    # While checkpoint 48 is being written; after the last checkpoint,
    # before summary.json (make test-all and CI).
    pytest.param('checkpoint', 48, marks=pytest.mark.slow),
    pytest.param('results', 96, marks=pytest.mark.slow),
])
def test_kill_then_resume_is_bitwise_identical(tmp_path, data_dir, reference,
                                               point, step):
  workdir = str(tmp_path / 'w')
  kill_and_resume(workdir, data_dir, point, step)
  assert_same_run(workdir, reference)


@pytest.mark.slow
@pytest.mark.parametrize('point,step', [
    ('step', 1), ('log', 40), ('checkpoint', 24), ('eval', 64), ('eval', 96),
])
def test_kill_point_sweep(tmp_path, data_dir, reference, point, step):
  workdir = str(tmp_path / 'w')
  kill_and_resume(workdir, data_dir, point, step)
  assert_same_run(workdir, reference)


@pytest.mark.slow
def test_twice_killed_run_still_matches(tmp_path, data_dir, reference):
  workdir = str(tmp_path / 'w')
  for point, step in (('step', 20), ('checkpoint', 72)):
    killed = run_main(workdir, data_dir,
                      env={'TRAINER_FAULT': f'kill:{point}:{step}'})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  train.train_and_evaluate(
      conftest.tiny_config(data_dir, num_train_steps=TOTAL_STEPS), workdir)
  assert_same_run(workdir, reference)


def _start(workdir, data_dir, *overrides):
  return subprocess.Popen([sys.executable,
                           *main_args(workdir, data_dir, *overrides)],
                          cwd=conftest.ROOT, stderr=subprocess.PIPE,
                          text=True)


def _signal_when_training(workdir, data_dir, signals):
  """Starts main.py; once it logs step 10, sends `signals`; returns
  (exit code, stderr)."""
  proc = _start(workdir, data_dir)
  lines, deadline = [], time.time() + TIMEOUT
  try:
    for line in proc.stderr:
      lines.append(line)
      if '[10] ' in line and 'train_loss' in line:
        for sig in signals:
          proc.send_signal(sig)
        break
      assert time.time() < deadline, 'no training log line in time'
    rest = proc.communicate(timeout=TIMEOUT)[1]
  finally:
    proc.kill()
  return proc.returncode, ''.join(lines) + rest


@pytest.mark.parametrize('sig', [
    signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_saves_checkpoint_then_resumes_exactly(tmp_path, data_dir,
                                                      reference, sig):
  workdir = str(tmp_path / 'w')
  # The signal comes from outside, once the first training log line shows
  # that the loop is running.
  code, stderr = _signal_when_training(workdir, data_dir, [sig])
  assert code == 75, stderr[-3000:]
  assert f'Got {signal.Signals(sig).name}: stopping after this step' in stderr
  message = [l for l in stderr.splitlines() if l.startswith('preempted:')]
  assert len(message) == 1 and signal.Signals(sig).name in message[0]
  saved = int(message[0].split(' at step ')[1].split()[0])
  assert saved < TOTAL_STEPS
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(saved)))
  resumed = run_main(workdir, data_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed from step {saved}' in resumed.stderr
  assert_same_run(workdir, reference)


@pytest.mark.slow
def test_second_signal_exits_at_once_resumable(tmp_path, data_dir, reference):
  workdir = str(tmp_path / 'w')
  code, stderr = _signal_when_training(workdir, data_dir,
                                       [signal.SIGTERM, signal.SIGTERM])
  # The same code as a clean preemption: sweeps treat both as resumable.
  assert code == 75, stderr[-3000:]
  resumed = run_main(workdir, data_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert_same_run(workdir, reference)


def test_second_trainer_exits_2_naming_the_holder(tmp_path, data_dir):
  workdir = str(tmp_path / 'w')
  os.makedirs(workdir)
  with workdir_files.hold_lock(workdir):
    result = run_main(workdir, data_dir)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = conftest.error_lines(result.stderr)
  assert len(errors) == 1 and workdir in errors[0]
  assert f'pid {os.getpid()}' in errors[0]


# A model with every piece of state that must survive a kill: BatchNorm
# statistics, dropout and augmentation (fold_in(rng, step)), a parameter EMA
# used for evaluation, label smoothing and masked weight decay.
RESNET_STEPS = 48
RESNET = {'model': 'resnet20', 'model_kwargs.dropout_rate': 0.2,
          'ema_decay': 0.9, 'eval_with_ema': True, 'label_smoothing': 0.1,
          'weight_decay': 5e-4, 'augment': 'crop_flip',
          'num_train_steps': RESNET_STEPS}


def resnet_config(data_dir):
  config = conftest.tiny_config(data_dir)
  for key, value in RESNET.items():
    if key.startswith('model_kwargs.'):
      config.model_kwargs[key.split('.', 1)[1]] = value
    else:
      config[key] = value
  return config


@pytest.fixture(scope='module')
def resnet_reference(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('resnet_reference'))
  train.train_and_evaluate(resnet_config(data_dir), workdir)
  return workdir


# A ResNet-20 run in real processes (about 45 s): CI and `make test-all`.
@pytest.mark.slow
@pytest.mark.parametrize('point,step', [('step', 30), ('checkpoint', 24)])
def test_resnet_with_every_kind_of_state_resumes_bitwise(
    tmp_path, data_dir, resnet_reference, point, step):
  workdir = str(tmp_path / 'w')
  overrides = [f'--config.{k}={str(v).lower() if isinstance(v, bool) else v}'
               for k, v in RESNET.items()]
  killed = run_main(workdir, data_dir, *overrides,
                    env={'TRAINER_FAULT': f'kill:{point}:{step}'})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  train.train_and_evaluate(resnet_config(data_dir), workdir)
  conftest.assert_same_run(workdir, resnet_reference, RESNET_STEPS)


# The full augmentation recipe and the per-epoch controls on the ResNet:
# RandAugment, mixup/CutMix (soft targets), random erasing, class weights,
# balanced sampling and the plateau schedule's factor in the optimizer
# state. About 60 s: CI and `make test-all`.
RECIPE = {**RESNET, 'augment': 'crop_flip,randaugment,mixup,cutmix,'
                               'random_erasing',
          'class_weights': 'balanced', 'sampling': 'balanced',
          'lr_schedule': 'plateau', 'plateau_patience': 1}


def recipe_config(data_dir):
  config = resnet_config(data_dir)
  config.update({k: v for k, v in RECIPE.items() if k not in RESNET or
                 k == 'augment'})
  return config


@pytest.mark.slow
def test_recipe_run_killed_mid_step_resumes_bitwise(tmp_path, data_dir):
  reference = str(tmp_path / 'reference')
  train.train_and_evaluate(recipe_config(data_dir), reference)
  workdir = str(tmp_path / 'w')
  overrides = [f'--config.{k}={str(v).lower() if isinstance(v, bool) else v}'
               for k, v in RECIPE.items()]
  killed = run_main(workdir, data_dir, *overrides,
                    env={'TRAINER_FAULT': 'kill:step:40'})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  train.train_and_evaluate(recipe_config(data_dir), workdir)
  conftest.assert_same_run(workdir, reference, RESNET_STEPS)
