"""Whole runs in real subprocesses: kills, preemption, damaged checkpoints,
divergence and bad input. Every subprocess is bounded by a timeout.

The reference is one uninterrupted run; an interrupted-then-resumed run must
match it bit for bit (parameters, every metric float, TensorBoard points).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import conftest
import event_files

TIMEOUT = 240  # Seconds; a hung run fails the test instead of blocking CI.
TIMING_KEYS = {'wall_seconds', 'train_seconds', 'train_images_per_second'}
# TensorBoard tags whose values are timings, not results.
TIMING_TAGS = {'images_per_second', 'steps_per_sec', 'uptime'}
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
  workdir = str(tmp_path_factory.mktemp('reference'))
  result = run_main(workdir, data_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def final_state(workdir):
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir,
                                                         'checkpoints'))
                 if s.isdigit())
  path = os.path.join(workdir, 'checkpoints', str(steps[-1]), 'state')
  return steps[-1], ocp.StandardCheckpointer().restore(path)


def scalar_points(workdir):
  """{(tag, step): value} over all event files; fails on a duplicate point."""
  points = {}
  for path in event_files.event_paths(workdir):
    for event in event_files.read_events(path):
      for value in event.summary.value:
        if value.tag in TIMING_TAGS or value.tag.startswith('_hparams_'):
          continue
        key = (value.tag, event.step)
        assert key not in points, f'duplicate TensorBoard point {key}'
        points[key] = value.tensor.SerializeToString()
  return points


def assert_same_run(workdir, reference):
  step_a, state_a = final_state(workdir)
  step_b, state_b = final_state(reference)
  assert step_a == step_b == TOTAL_STEPS
  leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
  assert len(leaves_a) == len(leaves_b)
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(a, b)  # Bitwise: no tolerance.
  summary_a = json.load(open(os.path.join(workdir, 'summary.json')))
  summary_b = json.load(open(os.path.join(reference, 'summary.json')))
  for key in set(summary_a) - TIMING_KEYS:
    if key != 'config':
      assert summary_a[key] == summary_b[key], key
  assert scalar_points(workdir) == scalar_points(reference)


def kill_and_resume(workdir, data_dir, point, step):
  killed = run_main(workdir, data_dir,
                    env={'TRAINER_FAULT': f'kill:{point}:{step}'})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  resumed = run_main(workdir, data_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  return resumed


@pytest.mark.parametrize('point,step', [
    ('step', 30),        # Mid-interval, after the step was dispatched.
    ('checkpoint', 48),  # While checkpoint 48 is being written.
    ('eval', 64),        # In the middle of the epoch-2 evaluation.
])
def test_kill_then_resume_is_bitwise_identical(tmp_path, data_dir, reference,
                                               point, step):
  workdir = str(tmp_path / 'w')
  kill_and_resume(workdir, data_dir, point, step)
  assert_same_run(workdir, reference)


@pytest.mark.slow
@pytest.mark.parametrize('point,step', [
    ('step', 1), ('log', 40), ('checkpoint', 24), ('eval', 96),
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
  assert run_main(workdir, data_dir).returncode == 0
  assert_same_run(workdir, reference)


def _start(workdir, data_dir, *overrides):
  return subprocess.Popen([sys.executable,
                           *main_args(workdir, data_dir, *overrides)],
                          cwd=conftest.ROOT, stderr=subprocess.PIPE,
                          text=True)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_checkpoint_then_resumes_exactly(tmp_path, data_dir,
                                                      reference, sig):
  workdir = str(tmp_path / 'w')
  # The signal comes from outside, once the first training log line shows
  # that the loop is running.
  proc = _start(workdir, data_dir)
  lines, deadline = [], time.time() + TIMEOUT
  try:
    for line in proc.stderr:
      lines.append(line)
      if '[10] ' in line and 'train_loss' in line:
        proc.send_signal(sig)
        break
      assert time.time() < deadline, 'no training log line in time'
    rest = proc.communicate(timeout=TIMEOUT)[1]
  finally:
    proc.kill()
  stderr = ''.join(lines) + rest
  assert proc.returncode == 75, stderr[-3000:]
  message = [l for l in stderr.splitlines() if l.startswith('preempted:')]
  assert len(message) == 1 and signal.Signals(sig).name in message[0]
  saved = int(message[0].split(' at step ')[1].split()[0])
  assert saved < TOTAL_STEPS
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(saved)))
  resumed = run_main(workdir, data_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed from step {saved}' in resumed.stderr
  assert_same_run(workdir, reference)


def test_truncated_latest_checkpoint_falls_back_and_is_kept(
    tmp_path, data_dir, reference):
  workdir = str(tmp_path / 'w')
  killed = run_main(workdir, data_dir, env={'TRAINER_FAULT': 'kill:step:80'})
  assert killed.returncode == -signal.SIGKILL
  steps = finished(workdir)
  assert len(steps) >= 2, steps  # 24, 48 and maybe 72 (async) are complete.
  latest, previous = steps[-1], steps[-2]
  # Truncate every data file of the latest checkpoint's state.
  for root, _, files in os.walk(os.path.join(workdir, 'checkpoints',
                                             str(latest), 'state')):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
  resumed = run_main(workdir, data_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'/{latest} cannot be restored' in resumed.stderr
  assert f'Resumed from step {previous}' in resumed.stderr
  moved = os.listdir(os.path.join(workdir, 'checkpoints_unreadable'))
  assert len(moved) == 1 and moved[0].startswith(f'{latest}-')
  assert_same_run(workdir, reference)


def finished(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir,
                                                        'checkpoints'))
                if s.isdigit())


def test_no_restorable_checkpoint_stops_and_moves_nothing(tmp_path,
                                                          data_dir):
  workdir = str(tmp_path / 'w')
  killed = run_main(workdir, data_dir, env={'TRAINER_FAULT': 'kill:step:50'})
  assert killed.returncode == -signal.SIGKILL
  assert finished(workdir), 'checkpoint 24 should be complete by step 50'
  for step in finished(workdir):
    with open(os.path.join(workdir, 'checkpoints', str(step), 'meta',
                           'metadata'), 'w') as f:
      f.write('{not json')
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  result = run_main(workdir, data_dir)
  assert result.returncode == 1
  error = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(error) == 1 and 'no checkpoint in' in error[0]
  assert f'step {finished(workdir)[0]}' in error[0]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before
  assert not os.path.exists(os.path.join(workdir, 'checkpoints_unreadable'))


def test_leftover_temporary_folder_is_ignored(tmp_path, data_dir, reference):
  workdir = str(tmp_path / 'w')
  killed = run_main(workdir, data_dir, env={'TRAINER_FAULT': 'kill:step:50'})
  assert killed.returncode == -signal.SIGKILL
  latest = finished(workdir)[-1]
  planted = os.path.join(workdir, 'checkpoints', '72.orbax-checkpoint-tmp-9')
  shutil.copytree(os.path.join(workdir, 'checkpoints', str(latest)), planted)
  resumed = run_main(workdir, data_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed from step {latest}' in resumed.stderr
  assert_same_run(workdir, reference)


def test_incompatible_config_is_refused_compatible_continues(tmp_path,
                                                             data_dir):
  workdir = str(tmp_path / 'w')
  assert run_main(workdir, data_dir,
                  '--config.num_train_steps=24').returncode == 0
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  refused = run_main(workdir, data_dir, '--config.model=mlp')
  assert refused.returncode == 2
  error = [l for l in refused.stderr.splitlines() if l.startswith('error:')]
  assert len(error) == 1 and "model 'cnn' there vs 'mlp' here" in error[0]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before
  extended = run_main(workdir, data_dir, '--config.num_train_steps=48',
                      '--config.log_every_steps=8')
  assert extended.returncode == 0, extended.stderr[-3000:]
  assert 'Resumed from step 24' in extended.stderr


def test_divergence_stops_without_saving_nonfinite_state(tmp_path, data_dir):
  workdir = str(tmp_path / 'w')
  # Start from good checkpoints, then diverge in the continued run.
  assert run_main(workdir, data_dir,
                  '--config.num_train_steps=24').returncode == 0
  result = run_main(workdir, data_dir, '--config.learning_rate=1e6')
  assert result.returncode == 1, result.stderr[-3000:]
  error = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(error) == 1 and 'loss is not finite at step' in error[0]
  bad_step = int(error[0].split('at step ')[1].split(';')[0])
  assert 24 < bad_step <= TOTAL_STEPS
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir,
                                                         'checkpoints'))
                 if s.isdigit())
  assert steps[-1] < bad_step
  _, state = final_state(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))
