"""Tests for sweep.py / sweeps.py: spec parsing, whole sweeps, resume."""

import csv
import json
import os

import pytest

import conftest
import sweeps
from configs import default

TIMEOUT = 600


def test_cross_product_parsed_with_config_types():
  trials = sweeps.parse_sweep_flags(
      default.get_config(), ['learning_rate=0.1,0.2', 'batch_size=16,32'])
  assert trials == [
      {'learning_rate': 0.1, 'batch_size': 16},
      {'learning_rate': 0.1, 'batch_size': 32},
      {'learning_rate': 0.2, 'batch_size': 16},
      {'learning_rate': 0.2, 'batch_size': 32}]
  assert sweeps.trial_name(trials[1]) == 'learning_rate=0.1,batch_size=32'


@pytest.mark.parametrize('spec,match', [
    ('learning_rat=0.1', "unknown config key 'learning_rat'"),
    ('batch_size=32,abc', "bad value 'abc' for batch_size"),
    ('batch_size=', 'lists no values'),
    ('batch_size', 'is not KEY=V1,V2'),
])
def test_bad_spec_is_refused(spec, match):
  with pytest.raises(sweeps.SweepError, match=match):
    sweeps.build_trials(default.get_config(), [spec], None)


def test_sweep_file(tmp_path):
  path = tmp_path / 'sweep.py'
  path.write_text('def get_sweep():\n'
                  '  return [{"learning_rate": 0.1, "optimizer": "adam"},\n'
                  '          {"learning_rate": 0.2, "optimizer": "sgd"}]\n')
  trials = sweeps.build_trials(default.get_config(), [], str(path))
  assert [t['optimizer'] for t in trials] == ['adam', 'sgd']
  path.write_text('def get_sweep():\n  return [{"batch_size": "x"}]\n')
  with pytest.raises(sweeps.SweepError, match="bad value 'x'"):
    sweeps.build_trials(default.get_config(), [], str(path))


def run_sweep_cli(workdir, data_dir, *extra, env=None):
  args = ['sweep.py', f'--workdir={workdir}',
          '--config=configs/default.py', f'--config.data_dir={data_dir}',
          '--config.eval_batch_size=20', '--config.num_train_steps=24',
          '--config.log_every_steps=8', '--config.checkpoint_every_steps=8',
          '--sweep=learning_rate=0.01,0.05', '--sweep=batch_size=8,16',
          *extra]
  return conftest.run_python(args, env=env, timeout=TIMEOUT)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return conftest.make_idx_dir(str(tmp_path_factory.mktemp('data')),
                               num_train=128, num_test=20)


def read_csv(workdir):
  with open(os.path.join(workdir, 'sweep.csv')) as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_sweep_runs_resumes_and_reports(tmp_path, data_dir):
  workdir = str(tmp_path / 'sweep')
  result = run_sweep_cli(workdir, data_dir, '--parallel=2')
  assert result.returncode == 0, result.stderr[-3000:]
  rows = read_csv(workdir)
  assert len(rows) == 4 and {r['status'] for r in rows} == {'done'}
  best = [float(r['best_test_accuracy']) for r in rows]
  assert best == sorted(best, reverse=True)
  assert {(r['learning_rate'], r['batch_size']) for r in rows} == {
      ('0.01', '8'), ('0.01', '16'), ('0.05', '8'), ('0.05', '16')}
  for name in ('sweep.md', 'sweep.png'):
    assert os.path.isfile(os.path.join(workdir, name))
  trial_dir = os.path.join(workdir, 'learning_rate=0.05,batch_size=16')
  summary = json.load(open(os.path.join(trial_dir, 'summary.json')))
  assert summary['config']['learning_rate'] == 0.05
  assert summary['config']['batch_size'] == 16

  # Again: nothing is retrained.
  mtime = os.path.getmtime(os.path.join(trial_dir, 'summary.json'))
  again = run_sweep_cli(workdir, data_dir, '--parallel=2')
  assert again.returncode == 0
  assert again.stdout.count('done, skipped') == 4
  assert os.path.getmtime(os.path.join(trial_dir, 'summary.json')) == mtime

  # An interrupted sweep (every trial killed at step 12) resumes to the same
  # numbers as the uninterrupted one.
  interrupted = str(tmp_path / 'interrupted')
  killed = run_sweep_cli(interrupted, data_dir, '--parallel=2',
                         env={'TRAINER_FAULT': 'kill:step:12'})
  assert killed.returncode == 75  # Killed trials are resumable, not failed.
  assert {r['status'] for r in read_csv(interrupted)} == {'interrupted'}
  resumed = run_sweep_cli(interrupted, data_dir, '--parallel=2')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  for row, ref in zip(sorted(read_csv(interrupted), key=lambda r: r['trial']),
                      sorted(rows, key=lambda r: r['trial'])):
    for key in ('status', 'train_loss', 'test_loss', 'test_accuracy'):
      assert row[key] == ref[key], (row['trial'], key)


@pytest.mark.slow
def test_failed_trial_is_recorded_and_others_finish(tmp_path, data_dir):
  workdir = str(tmp_path / 'sweep')
  args = ['sweep.py', f'--workdir={workdir}',
          '--config=configs/default.py', f'--config.data_dir={data_dir}',
          '--config.batch_size=8', '--config.eval_batch_size=20',
          '--config.num_train_steps=16', '--config.log_every_steps=4',
          '--sweep=learning_rate=0.01,1e6']
  result = conftest.run_python(args, timeout=TIMEOUT)
  assert result.returncode == 1
  rows = {r['learning_rate']: r for r in read_csv(workdir)}
  assert rows['0.01']['status'] == 'done'
  assert rows['1000000.0']['status'] == 'failed'
  assert 'loss is not finite' in rows['1000000.0']['error']


def test_bad_spec_exits_2_before_any_trial(tmp_path):
  workdir = str(tmp_path / 'sweep')
  result = conftest.run_python(
      ['sweep.py', f'--workdir={workdir}', '--config=configs/default.py',
       '--sweep=learning_rate=0.1,fast'], timeout=TIMEOUT)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: bad value 'fast' for learning_rate (a float in the config)")
  assert not os.path.exists(workdir)
