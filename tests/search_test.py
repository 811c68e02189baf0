"""Tests for search.py (sweep.py --search): the space, the study shared by
workers, leases, pruning, job-array slots and the best trial's config.

Most tests run searches in-process with a stand-in for main.py (FAKE_MAIN:
the same flags, epochs of a few hundredths of a second, accuracy from the
learning rate); the slow ones train for real in worker processes.
"""

import os
import runpy
import signal
import subprocess
import sys
import threading
import time

import pytest

import cli
import conftest
import search
import sweep_report
import sweep_runner
import workdir_files
from configs import default
from sweep_report_test import read_csv
from sweep_runner_test import install_main

TIMEOUT = 600

# main.py's flags and files without training: per epoch (FAKE_EPOCH_SECONDS
# each) a history.json entry with test accuracy = learning rate * epoch /
# num_epochs; a rerun continues after the epochs already written, as a
# resumed run does; every start is a line in starts.txt.
FAKE_MAIN = f'''
import json, os, sys, time
sys.path.insert(0, {conftest.ROOT!r})
from absl import app, flags
from ml_collections import config_flags
import cli
flags.DEFINE_string('workdir', None, '')
config_flags.DEFINE_config_file('config', None, '')

def path(name):
  return os.path.join(flags.FLAGS.workdir, name)

def write(name, obj):
  with open(path(name) + '.tmp', 'w') as f:
    json.dump(obj, f)
  os.replace(path(name) + '.tmp', path(name))

def main(argv):
  config = flags.FLAGS.config.to_dict()
  with open(path('starts.txt'), 'a') as f:
    f.write('start\\n')
  write('config.json', config)
  os.makedirs(path('checkpoints'), exist_ok=True)
  history = (json.load(open(path('history.json')))
             if os.path.exists(path('history.json')) else [])
  epochs = config['num_epochs']
  for epoch in range(len(history) + 1, epochs + 1):
    time.sleep(float(os.environ.get('FAKE_EPOCH_SECONDS', '0.02')))
    history.append(dict(epoch=epoch, step=epoch, test_accuracy=(
        config['learning_rate'] * epoch / epochs)))
    write('history.json', history)
  last = history[-1]['test_accuracy']
  write('summary.json', dict(
      test_accuracy=last, wall_seconds=0.0, best_chosen_on='test',
      best_step=epochs, best_epoch=epochs, best_test_accuracy=last,
      history=history))

app.run(main, flags_parser=cli.parse_flags)
'''
SPACE = ('learning_rate=uniform(0.1,0.9)', 'momentum=choice(0.8,0.9)')


@pytest.fixture
def fake_main(tmp_path, monkeypatch):
  monkeypatch.setattr(search, 'POLL_SECONDS', 0.02)
  return install_main(tmp_path, monkeypatch, FAKE_MAIN)


FIXED = {'num_epochs': 3}


def base_config(**overrides):
  """The base config with FIXED and `overrides`, as sweep.py has it."""
  config = default.get_config()
  config.update({**FIXED, **overrides})
  return config


def run_search(workdir, space=SPACE, fixed=None, best_config='', **options):
  options = {'search': 'random', 'n_trials': 4, **options}
  fixed = {**FIXED, **(fixed or {})}
  return search.search_and_report(
      str(workdir), base_config(**fixed), default.__file__, fixed,
      list(space), search.Options(**options), best_config=best_config)


def starts(workdir, name):
  with open(os.path.join(workdir, name, 'starts.txt')) as f:
    return len(f.readlines())


def error_line(capsys):
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), lines
  return lines[0]


def test_space_is_parsed_with_the_configs_types():
  space = search.parse_space(default.get_config(), [
      'learning_rate=loguniform(1e-3, 0.3)', 'batch_size=int(16,128)',
      'momentum=uniform(0.5,0.99)', 'optimizer=choice(sgd,adamw)',
      'num_epochs=loguniform(2,20)', 'model_kwargs.width=choice(8,16)'])
  lr, batch, momentum, optimizer, epochs, width = space.values()
  assert (lr.low, lr.high, lr.log) == (1e-3, 0.3, True)
  assert type(batch).__name__ == 'IntDistribution' and not batch.log
  assert (batch.low, batch.high) == (16, 128)
  assert type(momentum).__name__ == 'FloatDistribution' and not momentum.log
  assert optimizer.choices == ('sgd', 'adamw')
  # An integer key sampled log-uniformly stays an integer.
  assert type(epochs).__name__ == 'IntDistribution' and epochs.log
  assert width.choices == (8, 16)
  assert search.extremes(space)[:2] == [{'learning_rate': 1e-3},
                                        {'learning_rate': 0.3}]


@pytest.mark.parametrize('spec,message', [
    ('learning_rate', "--space='learning_rate' is not KEY=DISTRIBUTION"),
    ('learning_rate=normal(0,1)', "unknown distribution 'normal'; accepted: "
     'loguniform(a,b), uniform(a,b), int(a,b) or choice(v1,v2,...)'),
    ('learning_rate=uniform(0.3,0.1)', 'accepted: uniform(a,b) with a < b'),
    ('learning_rate=loguniform(0,1)', 'accepted: loguniform(a,b) with 0 < a'),
    ('learning_rate=uniform(0.1)', 'uniform() takes two numbers'),
    ('learning_rate=uniform(x,1)', "'x' is not a number"),
    ('batch_size=int(8,64.5)', "'64.5' is not an integer"),
    ('batch_size=uniform(8,64)', 'batch_size is an integer in the config'),
    ('batch_size=choice(32,big)', "bad value 'big' for batch_size"),
    ('optimizer=uniform(0,1)', 'optimizer is a str in the config; accepted: '
     'choice'),
    ('no_such_key=uniform(0,1)', "unknown config key 'no_such_key'"),
    ('model_kwargs=choice(1,2)', 'model_kwargs is a dict of options'),
    ('momentum=choice(0.9,0.9)', 'choice() names a value twice'),
])
def test_bad_space_is_named(spec, message):
  with pytest.raises(search.SweepError) as e:
    search.parse_space(default.get_config(), [spec])
  assert message in str(e.value)


@pytest.mark.parametrize('options,message', [
    ({'search': 'grid'}, "--search='grid'; accepted: random, tpe"),
    ({'pruner': 'asha'}, "--pruner='asha'; accepted: none, median, hyperband"),
    ({'n_trials': 0}, '--n_trials=0; accepted: an integer >= 1'),
    ({'lease_seconds': 0}, '--lease_seconds=0; accepted'),
    ({'storage': 'nonsense://x'}, "--storage='nonsense://x' cannot be "
     'opened (NoSuchModuleError'),
])
def test_bad_options_exit_2_before_anything_is_made(tmp_path, capsys,
                                                     fake_main, options,
                                                     message):
  workdir = tmp_path / 'sweep'
  assert run_search(workdir, **options) == cli.EXIT_BAD_INPUT
  assert message in error_line(capsys)
  assert not workdir.exists()


def test_a_search_runs_its_trials_reports_and_stays_done(tmp_path, capsys,
                                                         fake_main):
  workdir = str(tmp_path / 'sweep')
  best_file = str(tmp_path / 'best.py')
  assert run_search(workdir, parallel=2, best_config=best_file) == 0
  rows = read_csv(workdir)
  assert sorted(r['trial'] for r in rows) == [f'trial_00{i}'
                                              for i in range(4)]
  assert {r['status'] for r in rows} == {'done'}
  for row in rows:
    assert 0.1 <= float(row['learning_rate']) <= 0.9
    assert row['momentum'] in ('0.8', '0.9')
    # Each trial ran its own sampled values.
    recorded = workdir_files.read_json(os.path.join(workdir, row['trial']),
                                       workdir_files.CONFIG)
    assert recorded['learning_rate'] == float(row['learning_rate'])
  best = max(rows, key=lambda r: float(r['best_test_accuracy']))
  table = open(os.path.join(workdir, 'sweep.md')).read()
  assert table.startswith('Search: random sampler, pruner none, 4 of 4 '
                          'trials (4 complete)')
  assert f'Best: {best["trial"]}, best_test_accuracy' in table
  # The best trial's config trains as a config file.
  config = runpy.run_path(best_file)['get_config']()
  assert config.learning_rate == float(best['learning_rate'])
  assert config.to_dict() == workdir_files.read_json(
      os.path.join(workdir, best['trial']), workdir_files.CONFIG)
  # Again: nothing runs, the study is complete.
  capsys.readouterr()
  assert run_search(workdir, parallel=2) == 0
  assert all(starts(workdir, r['trial']) == 1 for r in rows)
  assert 'started' not in capsys.readouterr().out


def test_the_same_seed_samples_the_same_trials(tmp_path, fake_main):
  params = []
  for name in ('a', 'b'):
    run_search(tmp_path / name, n_trials=3, search='tpe')
    params.append([(r['learning_rate'], r['momentum'])
                   for r in sorted(read_csv(str(tmp_path / name)),
                                   key=lambda r: r['trial'])])
  assert params[0] == params[1] and len(set(params[0])) == 3


def test_an_rdb_storage_holds_the_study(tmp_path, fake_main):
  workdir = str(tmp_path / 'sweep')
  url = f'sqlite:///{tmp_path / "study.db"}'
  assert run_search(workdir, n_trials=2, storage=url) == 0
  assert (tmp_path / 'study.db').is_file()
  assert not os.path.exists(os.path.join(workdir, search.STUDY_FILE))
  assert run_search(workdir, n_trials=2, storage=url) == 0
  assert [starts(workdir, search.trial_name(i)) for i in range(2)] == [1, 1]


def test_another_space_or_objective_is_refused_by_name(tmp_path, capsys,
                                                       fake_main):
  workdir = tmp_path / 'sweep'
  assert run_search(workdir, n_trials=1) == 0
  capsys.readouterr()
  other = ('learning_rate=uniform(0.1,0.5)', 'momentum=choice(0.8,0.9)')
  assert run_search(workdir, space=other) == cli.EXIT_BAD_INPUT
  line = error_line(capsys)
  assert 'was made with space learning_rate=uniform(0.1,0.9), ' in line
  assert 'this command gives space learning_rate=uniform(0.1,0.5)' in line
  assert run_search(workdir, fixed={'validation_fraction': 0.1}
                    ) == cli.EXIT_BAD_INPUT
  assert ('made with objective best_test_accuracy, this command gives '
          'objective best_validation_accuracy') in error_line(capsys)


def test_two_workers_share_one_study_and_run_each_trial_once(tmp_path,
                                                             fake_main):
  workdir = str(tmp_path / 'sweep')
  os.makedirs(workdir)
  options = search.Options(search='random', n_trials=6, lease_seconds=30)
  space = search.parse_space(base_config(), SPACE)
  workers = [search.Worker(workdir, base_config(), default.__file__, FIXED,
                           space, 'best_test_accuracy', options,
                           threading.Event()) for _ in range(2)]
  threads = [threading.Thread(target=w.loop) for w in workers
             for _ in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(TIMEOUT)
  trials = workers[0].study.get_trials()
  assert sorted(t.number for t in trials) == list(range(6))
  assert {t.state.name for t in trials} == {'COMPLETE'}
  assert all(starts(workdir, search.trial_name(n)) == 1 for n in range(6))


def test_workers_started_together_make_one_study(tmp_path):
  # Each thread opens its own storage, as a worker process does; unlocked,
  # all but one failed (a duplicated study, or one read before its space
  # was recorded) in every round of a probe.
  options = search.Options(search='random', n_trials=2)
  space = search.parse_space(base_config(), SPACE)
  for round_ in range(3):
    workdir = str(tmp_path / f'sweep{round_}')
    os.makedirs(workdir)
    barrier, errors, studies = threading.Barrier(4), [], []

    def open_one():
      barrier.wait(TIMEOUT)
      try:
        studies.append(search.open_study(workdir, options, space,
                                         'best_test_accuracy', create=True))
      except Exception as e:  # pylint: disable=broad-except
        errors.append(repr(e))

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join(TIMEOUT)
    assert not errors and len(studies) == 4, errors
    ids = {s._study_id for s in studies}  # pylint: disable=protected-access
    assert len(ids) == 1
    assert studies[0].user_attrs['space'] == search.space_record(space)


def test_a_study_met_before_its_space_is_recorded(tmp_path):
  # As another worker leaves it between making the study and recording
  # what it was made with: the read-only check passes it by, the next
  # worker to open it records the space.
  workdir = str(tmp_path / 'sweep')
  os.makedirs(workdir)
  options = search.Options(search='random', n_trials=2)
  space = search.parse_space(base_config(), SPACE)
  search._optuna().create_study(  # pylint: disable=protected-access
      study_name=search.STUDY_NAME,
      storage=search._storage(workdir, ''))  # pylint: disable=protected-access
  assert search.open_study(workdir, options, space, 'best_test_accuracy',
                           create=False) is None
  study = search.open_study(workdir, options, space, 'best_test_accuracy',
                            create=True)
  assert study.user_attrs == {'space': search.space_record(space),
                              'objective': 'best_test_accuracy'}
  other = search.parse_space(base_config(), ['learning_rate=uniform(0.2,0.3)'])
  with pytest.raises(search.SweepError, match='was made with space'):
    search.open_study(workdir, options, other, 'best_test_accuracy',
                      create=False)


def test_a_trial_whose_worker_died_is_resumed_not_replaced(tmp_path,
                                                           capsys,
                                                           fake_main):
  workdir = str(tmp_path / 'sweep')
  os.makedirs(workdir)
  space = search.parse_space(base_config(), SPACE)
  options = search.Options(search='random', n_trials=2, lease_seconds=0.5)

  def worker():
    return search.Worker(workdir, base_config(), default.__file__, FIXED,
                         space, 'best_test_accuracy', options,
                         threading.Event())

  # A worker claims a trial and dies before renewing its lease: the trial
  # has a folder with an epoch done, as a killed run leaves it.
  dead = worker().claim()
  folder = os.path.join(workdir, dead.name)
  os.makedirs(folder)
  workdir_files.write_json(os.path.join(folder, 'history.json'), [
      {'epoch': 1, 'step': 1,
       'test_accuracy': dead.params['learning_rate'] / 3}])
  alive = worker()
  # While its lease holds, it is not taken: a new trial is (and left
  # unrun, its lease runs out too).
  assert alive.claim().number == 1
  time.sleep(0.6)
  alive.loop()
  out = capsys.readouterr().out
  assert f'{dead.name}: resuming' in out and 'trial_001: resuming' in out
  trials = sorted(alive.study.get_trials(), key=lambda t: t.number)
  # Still the study's 2 trials: none replaced by a new sample.
  assert [t.state.name for t in trials] == ['COMPLETE', 'COMPLETE']
  assert trials[0].params == dead.params
  recorded = workdir_files.read_json(folder, workdir_files.CONFIG)
  assert recorded['learning_rate'] == dead.params['learning_rate']
  # It went on from its epoch: its history is one run's.
  assert [h['epoch'] for h in workdir_files.read_json(
      folder, workdir_files.HISTORY)] == [1, 2, 3]


def test_pruned_trials_stop_are_recorded_and_never_resumed(tmp_path,
                                                           monkeypatch,
                                                           fake_main):
  monkeypatch.setenv('FAKE_EPOCH_SECONDS', '0.12')
  workdir = str(tmp_path / 'sweep')
  # Learning rates falling trial by trial: once the median pruner has its 5
  # finished trials, the later ones trail at their first epoch.
  space = ['learning_rate=choice(0.9,0.8,0.7,0.6,0.5,0.2,0.1)']
  monkeypatch.setattr(search, '_sampler', lambda kind, seed: _InOrder())
  code = run_search(workdir, space=space, n_trials=7, pruner='median')
  assert code == 0
  rows = {r['trial']: r for r in read_csv(workdir)}
  assert [rows[search.trial_name(i)]['status'] for i in range(7)] == (
      ['done'] * 5 + ['pruned'] * 2)
  for name in ('trial_005', 'trial_006'):
    pruned = workdir_files.read_json(os.path.join(workdir, name),
                                     workdir_files.PRUNED)
    assert pruned['pruner'] == 'median' and pruned['epoch'] >= 1
    # Its last figures are in the table.
    assert float(rows[name]['test_accuracy']) > 0
  table = open(os.path.join(workdir, 'sweep.md')).read()
  assert '(5 complete, 2 pruned)' in table
  assert run_search(workdir, space=space, n_trials=7, pruner='median') == 0
  assert starts(workdir, 'trial_005') == 1 and starts(workdir,
                                                      'trial_006') == 1


# Six trials of timed epochs (about 3 s): make test-all and CI.
@pytest.mark.slow
def test_hyperband_prunes_through_the_same_path(tmp_path, monkeypatch,
                                                fake_main):
  monkeypatch.setenv('FAKE_EPOCH_SECONDS', '0.1')
  workdir = str(tmp_path / 'sweep')
  space = ['learning_rate=choice(0.9,0.8,0.7,0.6,0.2,0.1)']
  monkeypatch.setattr(search, '_sampler', lambda kind, seed: _InOrder())
  assert run_search(workdir, space=space, n_trials=6,
                    pruner='hyperband') == 0
  statuses = [r['status'] for r in sorted(read_csv(workdir),
                                          key=lambda r: r['trial'])]
  assert statuses[0] == 'done' and 'pruned' in statuses
  assert set(statuses) == {'done', 'pruned'}


class _InOrder:
  """A sampler giving each trial the next choice in order (by its
  number)."""

  def __new__(cls):
    import optuna  # pylint: disable=g-import-not-at-top

    class Sampler(optuna.samplers.BaseSampler):

      def infer_relative_search_space(self, study, trial):
        return {}

      def sample_relative(self, study, trial, search_space):
        return {}

      def sample_independent(self, study, trial, name, distribution):
        return distribution.choices[trial.number % len(distribution.choices)]

    return Sampler()


def test_array_slots_run_one_trial_each(tmp_path, capsys, fake_main):
  workdir = str(tmp_path / 'sweep')
  assert run_search(workdir, n_trials=2, array_index=1) == 0
  trials = search.open_study(workdir, search.Options('random', 2),
                             search.parse_space(base_config(), SPACE),
                             'best_test_accuracy', create=False).get_trials()
  assert len(trials) == 1 and trials[0].user_attrs['slot'] == 1
  capsys.readouterr()
  assert run_search(workdir, n_trials=2, array_index=1) == 0
  assert 'array index 1: its trial trial_000 is complete; nothing to run' in (
      capsys.readouterr().out)
  assert run_search(workdir, n_trials=2, array_index=2) == 0
  assert ('array index 2 is past the last trial (--n_trials=2: indices 0 '
          'to 1); nothing to run') in capsys.readouterr().out
  assert run_search(workdir, n_trials=2, array_index=0) == 0
  assert {r['status'] for r in read_csv(workdir)} == {'done'}


def test_grid_array_index_runs_that_trial_only(tmp_path, capsys, fake_main):
  workdir = str(tmp_path / 'sweep')

  def grid(index):
    return sweep_runner.sweep_and_report(
        workdir, default.get_config(), default.__file__, {},
        ['learning_rate=0.1,0.2,0.3'], None, parallel=1, visible_devices=[],
        retry_failed=False, array_index=index)

  assert grid(1) == 0
  rows = {r['learning_rate']: r['status'] for r in read_csv(workdir)}
  assert rows == {'0.1': 'pending', '0.2': 'done', '0.3': 'pending'}
  capsys.readouterr()
  assert grid(3) == 0
  assert ('array index 3 is past the last trial (the sweep has 3: indices 0 '
          'to 2); nothing to run') in capsys.readouterr().out


def test_sweep_cli_refuses_mixed_flags_in_one_line(tmp_path):
  for extra, message in [
      (['--space=learning_rate=uniform(0.1,0.2)'], '--space needs --search'),
      (['--search=random', '--sweep=learning_rate=0.1,0.2',
        '--space=learning_rate=uniform(0.1,0.2)'],
       '--search samples from --space'),
      (['--search=random', '--array_index=-1',
        '--space=learning_rate=uniform(0.1,0.2)'],
       '--array_index=-1; accepted: an integer >= 0'),
      (['--search=random', '--space=learning_rate=uniform(0.2,0.1)'],
       'accepted: uniform(a,b) with a < b'),
  ]:
    result = conftest.run_python(
        ['sweep.py', f'--workdir={tmp_path / "w"}',
         '--config=configs/default.py', *extra], timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith('error: ') and message in lines[0], lines
    assert not (tmp_path / 'w').exists()


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return conftest.make_idx_dir(str(tmp_path_factory.mktemp('data')),
                               num_train=64, num_test=20)


def search_command(workdir, data_dir, *extra):
  return [sys.executable, 'sweep.py', f'--workdir={workdir}',
          '--config=configs/default.py', f'--config.data_dir={data_dir}',
          '--config.batch_size=8', '--config.eval_batch_size=20',
          '--config.num_epochs=4', '--config.log_every_steps=4',
          '--config.checkpoint_every_steps=2', '--search=random',
          '--space=learning_rate=loguniform(0.01,0.1)', '--lease_seconds=3',
          *extra]


# Real training in worker processes (about 2 minutes): make test-all, CI.
@pytest.mark.slow
def test_killed_worker_trial_resumes_bitwise_and_two_workers_share(
    tmp_path, data_dir):
  workdir = str(tmp_path / 'sweep')
  # Two workers at once: 3 trials, each run exactly once.
  workers = [subprocess.Popen(search_command(workdir, data_dir,
                                             '--n_trials=3'),
                              cwd=conftest.ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
  outputs = [w.communicate(timeout=TIMEOUT)[0] for w in workers]
  assert [w.returncode for w in workers] == [0, 0], outputs
  rows = read_csv(workdir)
  assert sorted(r['trial'] for r in rows) == ['trial_000', 'trial_001',
                                              'trial_002']
  assert {r['status'] for r in rows} == {'done'}
  assert sum(o.count(' started, log: ') for o in outputs) == 3

  # A worker killed (-9) mid-trial, then the same command again: the trial
  # is resumed in its folder and ends as an uninterrupted run of its config.
  killed_dir = str(tmp_path / 'killed')
  worker = subprocess.Popen(search_command(killed_dir, data_dir,
                                           '--n_trials=1'),
                            cwd=conftest.ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  history = os.path.join(killed_dir, 'trial_000', workdir_files.HISTORY)
  deadline = time.monotonic() + 300
  while not os.path.exists(history) and time.monotonic() < deadline:
    time.sleep(0.2)
  worker.send_signal(signal.SIGKILL)
  worker.wait(60)
  time.sleep(4)  # Past the lease.
  again = conftest.run_python(search_command(killed_dir, data_dir,
                                             '--n_trials=1')[1:],
                              timeout=TIMEOUT)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert 'trial_000: resuming' in again.stdout
  log = open(os.path.join(killed_dir, 'trial_000', 'train.log')).read()
  assert 'Resumed from step' in log
  summary = workdir_files.read_json(os.path.join(killed_dir, 'trial_000'),
                                    workdir_files.SUMMARY)
  reference = str(tmp_path / 'reference')
  config = summary['config']
  ran = conftest.run_python(
      ['main.py', f'--workdir={reference}', '--config=configs/default.py',
       *(f'--config.{k}={config[k]}' for k in (
           'data_dir', 'batch_size', 'eval_batch_size', 'num_epochs',
           'log_every_steps', 'checkpoint_every_steps', 'learning_rate'))],
      timeout=TIMEOUT)
  assert ran.returncode == 0, ran.stderr[-3000:]
  expected = workdir_files.read_json(reference, workdir_files.SUMMARY)
  for key in ('train_loss', 'test_loss', 'test_accuracy',
              'best_test_accuracy'):
    assert summary[key] == expected[key], key
  assert sweep_report.trial_status(os.path.join(killed_dir,
                                                'trial_000')) == 'done'
