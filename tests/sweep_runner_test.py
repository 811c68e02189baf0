"""Tests for sweep.py / sweep_runner.py: spec parsing, the checks made before
anything is created, running trials, signals, whole sweeps and resume
(sweep_report_test.py tests the progress lines and the table themselves).

Most tests run sweeps in-process with a stand-in for main.py (FAKE_MAIN: the
same flags, no training) or a fake Popen; two slow tests train for real.
"""

import json
import os
import signal
import subprocess
import threading
import time
from concurrent import futures

from absl import flags
import ml_collections
from ml_collections import config_flags
import pytest

import cli
import config_rules
import conftest
import sweep_report
import sweep_runner
from configs import default
from sweep_report_test import read_csv

TIMEOUT = 600
DEFAULT_CONFIG = os.path.join(conftest.ROOT, 'configs', 'default.py')

# main.py's flags (--config.model_kwargs.KEY too) and files without training:
# config.json as main.py writes it, summary.json (its best_* keys as main.py
# writes them) with test accuracy = learning rate, and main.py's exit 2
# when data_dir (relative to where it runs) is missing.
FAKE_MAIN = f'''
import json, os, sys
sys.path.insert(0, {conftest.ROOT!r})
from absl import app, flags
from ml_collections import config_flags
import cli
flags.DEFINE_string('workdir', None, '')
config_flags.DEFINE_config_file('config', None, '')

def write(name, obj):
  with open(os.path.join(flags.FLAGS.workdir, name), 'w') as f:
    json.dump(obj, f)

def main(argv):
  config = flags.FLAGS.config.to_dict()
  write('config.json', config)
  if config['data_dir'] and not os.path.isdir(config['data_dir']):
    print('error: no folder ' + config['data_dir'])
    sys.exit(2)
  accuracy = config['learning_rate']
  write('summary.json', dict(
      train_loss=1.0, train_accuracy=accuracy, test_loss=1.0,
      test_accuracy=accuracy, wall_seconds=0.0, best_chosen_on='test',
      best_step=10, best_epoch=1, best_test_accuracy=accuracy,
      history=[dict(epoch=1, step=10, test_accuracy=accuracy)]))

app.run(main, flags_parser=cli.parse_flags)
'''


def check_in_process(configs):
  """sweep_runner.check_configs_in_child's answer without the child (its
  seconds of JAX import): the same rules, in this process."""
  results = []
  for config in configs:
    try:
      config_rules.validate_config(ml_collections.ConfigDict(config),
                                   device_count=1, training=True)
      results.append(['ok', ''])
    except config_rules.ConfigError as e:
      results.append(['invalid', str(e)])
  return results


def install_main(tmp_path, monkeypatch, code=FAKE_MAIN) -> str:
  """Trials run `code` as their main.py; configs are checked in-process."""
  path = tmp_path / 'fake_main.py'
  path.write_text(code)
  monkeypatch.setattr(sweep_runner, 'MAIN', str(path))
  monkeypatch.setattr(sweep_runner, 'check_configs_in_child',
                      check_in_process)
  return str(path)


@pytest.fixture
def fake_main(tmp_path, monkeypatch):
  return install_main(tmp_path, monkeypatch)


class FakeProc:
  """A Popen stand-in: exits with `code`, once `release` is set if given."""

  def __init__(self, code, release=None):
    self.pid, self.code, self.release = id(self), code, release
    self.signals = []

  def wait(self):
    if self.release:
      self.release.wait(TIMEOUT)
    return self.code

  def send_signal(self, signum):
    self.signals.append(signum)


@pytest.fixture
def popen(monkeypatch):
  """Replaces subprocess.Popen for main.py (other children, such as the
  config check's, run); set .proc, read .calls."""
  real_popen = subprocess.Popen

  class Recorder:

    def __init__(self):
      self.calls, self.proc = [], FakeProc(0)

    def __call__(self, args, **kwargs):
      if sweep_runner.MAIN not in args:
        return real_popen(args, **kwargs)
      self.calls.append((args, kwargs))
      return self.proc

  recorder = Recorder()
  monkeypatch.setattr(subprocess, 'Popen', recorder)
  return recorder


def sweep(workdir, config=None, fixed=None, specs=('learning_rate=0.1,0.2',),
          config_file=DEFAULT_CONFIG, sweep_file=None, parallel=1,
          visible_devices=(), verbose=False):
  """sweep_runner.sweep_and_report with `fixed` applied to `config` first,
  as sweep.py has them: 'model_kwargs.KEY' ones as text, by cli."""
  config = config or default.get_config()
  fixed = fixed or {}
  config.update({k: v for k, v in fixed.items() if '.' not in k})
  cli.apply_kwargs_overrides(config, {k: v for k, v in fixed.items()
                                      if '.' in k})
  return sweep_runner.sweep_and_report(
      workdir, config, config_file, fixed, list(specs), sweep_file,
      parallel=parallel, visible_devices=list(visible_devices),
      retry_failed=False, verbose=verbose)


def error_line(capsys):
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), lines
  return lines[0]


def test_cross_product_parsed_with_config_types():
  trials = sweep_runner.parse_sweep_flags(
      default.get_config(), ['learning_rate=0.1,0.2', 'batch_size=16,32'])
  assert trials == [
      {'learning_rate': 0.1, 'batch_size': 16},
      {'learning_rate': 0.1, 'batch_size': 32},
      {'learning_rate': 0.2, 'batch_size': 16},
      {'learning_rate': 0.2, 'batch_size': 32}]
  assert sweep_runner.trial_name(trials[1]) == 'learning_rate=0.1,batch_size=32'


def kwargs_config():
  """configs/default.py with model_kwargs a config file may set: swept
  values of these keys take their types."""
  config = default.get_config()
  config.model_kwargs.update({'dropout_rate': 0.0, 'dtype': 'float32'})
  return config


@pytest.mark.parametrize('specs,match', [
    (['learning_rat=0.1'], "unknown config key 'learning_rat'"),
    (['batch_size=32,abc'], "bad value 'abc' for batch_size .*an integer"),
    (['batch_size='], "'batch_size=' lists no values"),
    (['batch_size=,'], "'batch_size=,' lists no values"),
    (['batch_size'], 'is not KEY=V1,V2'),
    (['learning_rate=0.1', 'learning_rate=0.2'],
     "names 'learning_rate' twice .*one --sweep=learning_rate=V1,V2"),
    (['learning_rate=0.1,nan'], "bad value 'nan' for learning_rate .*finite"),
    (['learning_rate=inf'], "bad value 'inf' for learning_rate"),
    (['learning_rate=-inf'], "bad value '-inf' for learning_rate"),
    (['data_dir=a/b,a_b'], "would share the folder 'data_dir=a_b'"),
    (['model_kwargs.dropout_rate=0.1,x'],
     "bad value 'x' for model_kwargs.dropout_rate .*a finite number"),
    (['model_kwargs.dropout_rate=nan'], "bad value 'nan'"),
    (['model_kwargs.hidden=1e999'], "bad value '1e999' .*a finite number"),
    (['model_kwargs=1'], r'model_kwargs is a dict of options; accepted: its '
                         r'keys, one at a time \(--sweep=model_kwargs.KEY'),
    (['model.stem=small'],
     "unknown config key 'model.stem' .*model_kwargs.KEY"),
    (['foo_kwargs.a=1'], "unknown config key 'foo_kwargs.a'"),
])
def test_bad_spec_is_refused(specs, match):
  with pytest.raises(sweep_runner.SweepError, match=match):
    sweep_runner.build_trials(kwargs_config(), specs, None)


def test_sweep_file(tmp_path):
  path = tmp_path / 'sweep.py'
  path.write_text('def get_sweep():\n'
                  '  return [{"learning_rate": 0.1, "optimizer": "adam"},\n'
                  '          {"learning_rate": 0.2, "optimizer": "sgd"}]\n')
  trials = sweep_runner.build_trials(default.get_config(), [], str(path))
  assert [t['optimizer'] for t in trials] == ['adam', 'sgd']
  # A key both in --sweep and in the file is fine; equal trials run once.
  trials = sweep_runner.build_trials(default.get_config(),
                               ['learning_rate=0.1,0.3'], str(path))
  assert [t['learning_rate'] for t in trials] == [0.1, 0.3, 0.1, 0.2]
  path.write_text('def get_sweep():\n'
                  '  return [{"batch_size": 8, "learning_rate": 0.1}]\n')
  assert sweep_runner.build_trials(default.get_config(),
                             ['learning_rate=0.1', 'batch_size=8'],
                             str(path)) == [{'learning_rate': 0.1,
                                             'batch_size': 8}]


def test_model_kwargs_keys_are_swept_with_their_types(tmp_path):
  config = kwargs_config()
  trials = sweep_runner.parse_sweep_flags(config, [
      'model_kwargs.dropout_rate=0,0.5', 'model_kwargs.stem=small'])
  # A key in the config takes its type; a new one is read as main.py reads
  # it (cli.parse_value).
  assert trials == [{'model_kwargs.dropout_rate': 0.0,
                     'model_kwargs.stem': 'small'},
                    {'model_kwargs.dropout_rate': 0.5,
                     'model_kwargs.stem': 'small'}]
  assert sweep_runner.trial_name(trials[1]) == (
      'model_kwargs.dropout_rate=0.5,model_kwargs.stem=small')
  assert sweep_runner.override_args(trials[1]) == [
      '--config.model_kwargs.dropout_rate=0.5',
      '--config.model_kwargs.stem=small']
  # A comma inside brackets does not split values: two tuples.
  assert sweep_runner.parse_sweep_flags(config, [
      'model_kwargs.widths=(8,16), [16, 32]']) == [
          {'model_kwargs.widths': (8, 16)}, {'model_kwargs.widths': [16, 32]}]
  path = tmp_path / 'sweep.py'
  path.write_text('def get_sweep():\n'
                  '  return [{"model": "resnet18",\n'
                  '           "model_kwargs.widths": (8, 8, 16, 16)}]\n')
  trial, = sweep_runner.build_trials(config, [], str(path))
  assert trial == {'model': 'resnet18', 'model_kwargs.widths': (8, 8, 16, 16)}
  # As main.py saves it: model_kwargs nested, the tuple a JSON list.
  assert sweep_runner.expected_config(config, trial)['model_kwargs'] == {
      'dropout_rate': 0.0, 'dtype': 'float32', 'widths': [8, 8, 16, 16]}
  assert 'widths' not in config.model_kwargs  # The base config is kept.
  with pytest.raises(sweep_runner.SweepError,
                     match="'model_kwargs.dtype' is both fixed"):
    sweep_runner.build_trials(config, ['model_kwargs.dtype=bfloat16'], None,
                              fixed_keys={'model_kwargs.dtype': 'float32'})


def test_rerun_with_other_model_kwargs_names_the_nested_key(tmp_path):
  config = kwargs_config()
  trial = {'model_kwargs.dropout_rate': 0.5}
  folder = tmp_path / sweep_runner.trial_name(trial)
  folder.mkdir()
  recorded = sweep_runner.expected_config(config, trial)
  (folder / 'config.json').write_text(json.dumps(recorded))
  sweep_runner.check_recorded_configs(str(tmp_path), config, [trial])
  cli.apply_kwargs_overrides(config, {'model_kwargs.dtype': 'bfloat16'})
  with pytest.raises(sweep_runner.SweepError) as error:
    sweep_runner.check_recorded_configs(str(tmp_path), config, [trial])
  assert ("was run with model_kwargs.dtype='float32', this sweep gives "
          "model_kwargs.dtype='bfloat16'") in str(error.value)
  cli.apply_kwargs_overrides(config, {'model_kwargs.dtype': 'float32',
                                      'model_kwargs.extra': '1'})
  with pytest.raises(sweep_runner.SweepError,
                     match='was run with no model_kwargs.extra, this sweep '
                           'gives model_kwargs.extra=1'):
    sweep_runner.check_recorded_configs(str(tmp_path), config, [trial])


def test_model_kwargs_reach_every_trial(tmp_path, fake_main):
  workdir = str(tmp_path / 'sweep')
  assert sweep(workdir, fixed={'model': 'resnet18',
                               'model_kwargs.stem': 'small'},
               specs=['model_kwargs.dropout_rate=0.1,0.2']) == 0
  saved = json.load(open(os.path.join(
      workdir, 'model_kwargs.dropout_rate=0.2', 'config.json')))
  assert saved['model_kwargs'] == {'dropout_rate': 0.2, 'stem': 'small'}
  # Run again: the recorded nested configs match, nothing is rerun.
  assert sweep(workdir, fixed={'model': 'resnet18',
                               'model_kwargs.stem': 'small'},
               specs=['model_kwargs.dropout_rate=0.1,0.2']) == 0


def test_config_rules_check_every_trial_in_one_child():
  config = default.get_config()
  trials = [{'learning_rate': 0.1}, {'learning_rate': -1.0},
            {'momentum': 1.5}, {'model_kwargs.foo': 1},
            {'model': 'resnet18', 'model_kwargs.stem': 'tiny'},
            {'batch_size': 7}]  # Any batch suits the one device assumed.
  results = sweep_runner.check_configs_in_child(
      [sweep_runner.expected_config(config, t) for t in trials])
  assert results == [
      ['ok', ''], ['invalid', 'learning_rate must be > 0, got -1.0'],
      ['invalid', 'momentum must be in [0, 1), got 1.5'],
      ['invalid', "unknown config key 'model_kwargs.foo' for model cnn; "
                  "accepted: model_kwargs.dropout_rate, model_kwargs.dtype"],
      ['invalid', "model_kwargs: unknown stem 'tiny'; accepted: imagenet, "
                  "small"],
      ['ok', '']]


def tree(path):
  """Every file and folder under `path` with its bytes and mtime."""
  found = {}
  for folder, dirs, files in os.walk(path):
    for name in dirs + files:
      full = os.path.join(folder, name)
      found[full] = (os.stat(full).st_mtime_ns, None if name in dirs else
                     open(full, 'rb').read())
  return found


def test_invalid_trials_are_refused_before_anything_is_created(
    tmp_path, popen, monkeypatch, capsys):
  monkeypatch.setattr(sweep_runner, 'check_configs_in_child',
                      check_in_process)
  workdir = str(tmp_path / 'sweep')
  assert sweep(workdir, specs=['learning_rate=-1,-2']) == 2
  assert error_line(capsys) == (
      'error: trial learning_rate=-1.0: learning_rate must be > 0, got -1.0 '
      '(1 other of the 2 trials to run is invalid too); nothing was run')
  assert not os.path.exists(workdir) and not popen.calls
  # A sweep folder of earlier trials stays as it was, to the byte.
  old = os.path.join(workdir, 'learning_rate=0.1')
  os.makedirs(old)
  with open(os.path.join(old, 'config.json'), 'w') as f:
    json.dump(sweep_runner.expected_config(default.get_config(),
                                           {'learning_rate': 0.1}), f)
  before = tree(workdir)
  assert sweep(workdir, specs=['learning_rate=0.1,0.2',
                               'model_kwargs.foo=1']) == 2
  assert ("trial learning_rate=0.1,model_kwargs.foo=1: unknown config key "
          "'model_kwargs.foo' for model cnn") in error_line(capsys)
  assert tree(workdir) == before and not popen.calls


@pytest.mark.parametrize('code,reason', [
    ('import sys; sys.exit("no JAX here")', 'no JAX here'),
    ('import time; time.sleep(30)', 'the check took over 0.5 s'),
    ('print("not json")', 'the check exited 0'),
])
def test_a_check_without_an_answer_leaves_it_to_the_trials(
    tmp_path, popen, monkeypatch, capsys, code, reason):
  monkeypatch.setattr(sweep_runner, '_CHECK_CONFIGS', code)
  monkeypatch.setattr(sweep_runner, 'CHECK_TIMEOUT_SECONDS', 0.5)
  monkeypatch.setattr(sweep_report, 'write_reports', lambda *_: '')
  # Both trials run (FakeProc exits 0 but leaves no summary: unfinished).
  assert sweep(str(tmp_path / 'sweep')) == 75
  assert f"configs were not checked before the run ({reason}); each trial " \
         f"checks its own" in capsys.readouterr().err
  assert len(popen.calls) == 2


SWEEP_FILE_RAISING = """
def values():
  return {'a': 1}['b']

def get_sweep():
  return [{'learning_rate': values()}]
"""


@pytest.mark.parametrize('body,error', [
    (SWEEP_FILE_RAISING, "get_sweep() raised KeyError: 'b'"),
    ('import no_such_helper\n', "does not load (ModuleNotFoundError"),
])
def test_sweep_file_traceback_is_shown_at_verbosity_1(tmp_path, popen,
                                                       capsys, body, error):
  path = tmp_path / 'my_sweep.py'
  path.write_text(body)
  workdir = str(tmp_path / 'sweep')
  assert sweep(workdir, specs=(), sweep_file=str(path)) == 2
  line = error_line(capsys)
  assert error in line
  assert line.endswith('(run with --verbosity=1 for the traceback)')
  assert sweep(workdir, specs=(), sweep_file=str(path), verbose=True) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert lines[0] == 'Traceback (most recent call last):'
  assert lines[1].startswith(f'  File "{path}", line ')  # Not runpy's.
  assert error in lines[-1] and 'verbosity' not in lines[-1]
  assert not os.path.exists(workdir) and not popen.calls


@pytest.mark.parametrize('body,match', [
    (None, 'does not exist'),
    ('def get_sweep(:\n', r'does not load \(SyntaxError: '),
    ('import no_such_module\n', r'does not load \(ModuleNotFoundError'),
    ('SWEEP = []\n', r'has no get_sweep\(\)'),
    ('def get_sweep():\n  return {"learning_rate": 0.1}\n',
     r"returned \{'learning_rate': 0.1\}; accepted: a non-empty list"),
    ('def get_sweep():\n  return []\n', r'returned \[\]; accepted'),
    ('def get_sweep():\n  return [{}]\n', r'returned \[\{\}\]; accepted'),
    ('def get_sweep():\n  return 1 / 0\n', 'raised ZeroDivisionError'),
    ('def get_sweep():\n  return [{"batch_size": "x"}]\n', "bad value 'x'"),
    ('def get_sweep():\n  return [{"learning_rate": float("nan")}]\n',
     "bad value 'nan' for learning_rate"),
])
def test_bad_sweep_file_is_refused(tmp_path, body, match):
  path = tmp_path / 'sweep.py'
  if body is not None:
    path.write_text(body)
  with pytest.raises(sweep_runner.SweepError, match=match):
    sweep_runner.build_trials(default.get_config(), [], str(path))


@pytest.mark.parametrize('kwargs,message', [
    (dict(parallel=0), '--parallel=0; accepted: an integer >= 1'),
    (dict(parallel=-2), '--parallel=-2; accepted: an integer >= 1'),
    (dict(visible_devices=['0', '', '1']),
     "--visible_devices='0,,1' has an empty id"),
    (dict(visible_devices=['']), "--visible_devices='' has an empty id"),
    (dict(specs=['learning_rate=']), "'learning_rate=' lists no values"),
    (dict(fixed={'learning_rate': 0.1}),
     "'learning_rate' is both fixed (--config.learning_rate) and swept"),
])
def test_bad_options_refused_before_the_workdir_exists(
    tmp_path, popen, capsys, kwargs, message):
  workdir = str(tmp_path / 'sweep')
  assert sweep(workdir, **kwargs) == 2
  assert message in error_line(capsys)
  assert not os.path.exists(workdir) and not popen.calls


def test_workdir_that_is_a_file_is_refused(tmp_path, popen, capsys):
  workdir = tmp_path / 'sweep'
  workdir.write_text('')
  assert sweep(str(workdir)) == 2
  assert f"--workdir '{workdir}' is an existing file" in error_line(capsys)
  assert not popen.calls


def test_sweep_from_another_folder_uses_its_relative_paths(
    tmp_path, monkeypatch, fake_main, capsys):
  # As `cd ~; python trainer/sweep.py --workdir=sw --config=my_config.py
  # --config.data_dir=data`: all three relative to where the user stands.
  user = tmp_path / 'user'
  (user / 'data').mkdir(parents=True)
  (user / 'my_config.py').write_text(open(DEFAULT_CONFIG).read())
  monkeypatch.chdir(user)
  assert sweep('sw', fixed={'data_dir': 'data'}, config_file='my_config.py',
               parallel=2) == 0
  out = capsys.readouterr().out
  assert out.count(': done') == 2, out
  assert json.load(open('sw/learning_rate=0.2/config.json'))[
      'data_dir'] == 'data'
  rows = read_csv('sw')
  assert [(r['learning_rate'], r['test_accuracy']) for r in rows] == [
      ('0.2', '0.2'), ('0.1', '0.1')]


def test_rerun_with_other_fixed_values_is_refused(tmp_path, fake_main,
                                                  capsys):
  workdir = str(tmp_path / 'sweep')
  assert sweep(workdir, fixed={'num_epochs': 3}) == 0
  assert sweep(workdir, fixed={'num_epochs': 3},
               specs=['learning_rate=0.1,0.2,0.3']) == 0
  assert capsys.readouterr().out.count('done, skipped') == 2
  mtime = os.path.getmtime(os.path.join(workdir, 'learning_rate=0.1',
                                        'summary.json'))

  assert sweep(workdir, fixed={'num_epochs': 5}) == 2
  assert error_line(capsys) == (
      f'error: trial learning_rate=0.1 in {workdir} was run with '
      f'num_epochs=3, this sweep gives num_epochs=5; accepted: the base '
      f'config and fixed --config values it was run with, or another '
      f'--workdir')
  other_base = default.get_config()
  other_base.dataset = 'fashion_mnist'
  assert sweep(workdir, config=other_base, fixed={'num_epochs': 3}) == 2
  assert ("was run with dataset='mnist', this sweep gives "
          "dataset='fashion_mnist'") in error_line(capsys)
  assert os.path.getmtime(os.path.join(workdir, 'learning_rate=0.1',
                                       'summary.json')) == mtime
  # A key the config file gained since (here: one the record lacks).
  path = os.path.join(workdir, 'learning_rate=0.2', 'config.json')
  recorded = json.load(open(path))
  del recorded['seed']
  with open(path, 'w') as f:
    json.dump(recorded, f)
  assert sweep(workdir, fixed={'num_epochs': 3}) == 2
  assert 'was run with no seed, this sweep gives seed=0' in error_line(capsys)


def parse_config_flags(argv):
  """The config and its overrides as config_flags parses `argv`."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values,
                                  sys_argv=argv)
  flag_values(argv)
  return (flag_values.config,
          config_flags.get_override_values(flag_values['config']))


def test_fixed_overrides_round_trip_to_the_trials(tmp_path):
  path = tmp_path / 'config.py'
  path.write_text('import ml_collections\n'
                  'def get_config():\n'
                  '  return ml_collections.ConfigDict(dict(\n'
                  '      augment=False, mirror=True, note="x", steps=1,\n'
                  '      rate=0.5))\n')
  config, fixed = parse_config_flags(
      ['sweep.py', f'--config={path}', '--config.steps', '3',
       '--config.augment', '--noconfig.mirror', '--config.note', 'a b, c=d',
       '--config.rate=1e-3'])
  assert fixed == dict(steps=3, augment=True, mirror=False, note='a b, c=d',
                       rate=1e-3)
  args = sweep_runner.override_args(fixed)
  trial_config, _ = parse_config_flags(['main.py', f'--config={path}', *args])
  assert trial_config.to_dict() == config.to_dict()
  empty, _ = parse_config_flags(['main.py', f'--config={path}',
                                 *sweep_runner.override_args({'note': ''})])
  assert empty.note == ''


def test_cli_gives_trials_the_fixed_overrides(tmp_path):
  workdir = str(tmp_path / 'sweep')
  fake = tmp_path / 'fake_main.py'
  fake.write_text(FAKE_MAIN)
  # sweep.py as a program, its trials run by FAKE_MAIN.
  launcher = (f'import runpy, sweep_runner; sweep_runner.MAIN = {str(fake)!r}; '
              f'runpy.run_path("sweep.py", run_name="__main__")')
  result = conftest.run_python(
      ['-c', launcher, f'--workdir={workdir}', '--config=configs/default.py',
       '--config.num_epochs', '3', '--config.dataset', 'my data',
       '--config.model_kwargs.dropout_rate', '0.3',
       '--sweep=learning_rate=0.1'], timeout=TIMEOUT)
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.load(open(os.path.join(workdir, 'learning_rate=0.1',
                                       'config.json')))
  assert (config['num_epochs'], config['dataset']) == (3, 'my data')
  assert config['model_kwargs'] == {'dropout_rate': 0.3}


def test_cli_bad_input_exits_2_in_one_line_before_any_trial(tmp_path):
  workdir = str(tmp_path / 'sweep')
  no_get_config = tmp_path / 'no_get_config.py'
  no_get_config.write_text('CONFIG = {}\n')
  raising = tmp_path / 'raising_sweep.py'
  raising.write_text(SWEEP_FILE_RAISING)
  base = ['sweep.py', f'--workdir={workdir}']
  lr = '--sweep=learning_rate=0.1'
  for args, error in [
      (['--config=configs/default.py', '--sweep=learning_rate=0.1,fast'],
       "bad value 'fast' for learning_rate (a float in the config; "
       "accepted: a finite number)"),
      (['--config=configs/nope.py', lr],
       "cannot load --config=configs/nope.py: [Errno 2] No such file or "
       "directory: 'configs/nope.py'"),
      ([f'--config={no_get_config}', lr],
       f'cannot load --config={no_get_config}: it defines no get_config() '
       f'(a config file is Python with get_config() returning an '
       f'ml_collections.ConfigDict)'),
      (['--config=configs/default.py', '--config.learning_rat=1', lr],
       "unknown config key 'learning_rat' (did you mean 'learning_rate'?); "
       "the accepted keys are those of configs/default.py"),
      (['--config=configs/default.py', '--parallel=x', lr],
       "flag --parallel=x: invalid literal for int() with base 10: 'x'"),
      (['--config=configs/default.py', '--parallel=0', lr],
       '--parallel=0; accepted: an integer >= 1'),
      (['--config=configs/default.py', lr, 'extra'],
       "unexpected arguments ['extra']; accepted: flags only"),
      (['--config=configs/default.py', f'--sweep_file={raising}'],
       f"--sweep_file '{raising}': get_sweep() raised KeyError: 'b' (run "
       f"with --verbosity=1 for the traceback)"),
  ]:
    result = conftest.run_python(base + args, timeout=TIMEOUT)
    assert (result.returncode, result.stderr.strip().splitlines()) == (
        2, [f'error: {error}']), args
  result = conftest.run_python(
      base + ['--config=configs/default.py', f'--sweep_file={raising}',
              '--verbosity=1'], timeout=TIMEOUT)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and lines[0].startswith('Traceback')
  assert lines[-2:] == ["KeyError: 'b'", f"error: --sweep_file '{raising}': "
                        f"get_sweep() raised KeyError: 'b'"], lines
  assert not os.path.exists(workdir)


@pytest.mark.parametrize('code,status', [
    (0, 'done'), (75, 'interrupted'), (-signal.SIGTERM, 'interrupted'),
    (-signal.SIGKILL, 'interrupted'), (143, 'interrupted'),
    (130, 'interrupted'), (137, 'interrupted'), (1, 'failed'),
    (2, 'failed')])
def test_trial_exit_code_gives_its_status(tmp_path, popen, code, status):
  popen.proc = FakeProc(code)
  workdir = str(tmp_path / 'trial')
  assert sweep_runner.run_trial(workdir, 'c.py', {'seed': 1},
                          {'learning_rate': 0.5}) == status
  args, kwargs = popen.calls[0]
  assert args[1:] == [sweep_runner.MAIN, f'--workdir={workdir}', '--config=c.py',
                      '--config.seed=1', '--config.learning_rate=0.5']
  assert kwargs.get('cwd') is None  # Where the sweep runs, not ROOT.
  assert os.path.isfile(os.path.join(workdir, 'failed.json')) == (
      status == 'failed')


def test_trial_start_names_the_file_its_output_goes_to(tmp_path, popen):
  logs = []
  sweep_runner.run_trial(str(tmp_path / 't'), 'c.py', {}, {'seed': 1},
                         on_start=logs.append)
  assert logs == [popen.calls[0][1]['stdout'].name] == [
      str(tmp_path / 't' / 'train.log')]


def test_signal_before_a_trial_starts_keeps_it_from_starting(tmp_path,
                                                            popen):
  stop = threading.Event()
  with futures.ThreadPoolExecutor(1) as pool:
    # A signal handler that has decided to stop and waits for the lock:
    # a trial about to start must not start after that.
    with sweep_runner._running_lock:  # pylint: disable=protected-access
      status = pool.submit(sweep_runner.run_trial, str(tmp_path / 't'), 'c.py', {},
                           {'seed': 1}, stop=stop)
      futures.wait([status], timeout=0.2)
      stop.set()
    assert status.result() is None
  assert not popen.calls


def test_second_signal_stops_trials_at_once_and_exits_75(
    tmp_path, popen, monkeypatch):
  popen.proc = FakeProc(75, release=threading.Event())
  stop = threading.Event()

  def fake_exit(code):
    raise SystemExit(code)
  monkeypatch.setattr(os, '_exit', fake_exit)
  with futures.ThreadPoolExecutor(1) as pool:
    status = pool.submit(sweep_runner.run_trial, str(tmp_path / 't'), 'c.py', {},
                         {'seed': 1}, stop=stop)
    try:
      while not popen.calls and not status.done():
        time.sleep(0.01)
      sweep_runner.handle_signal(stop, signal.SIGINT)
      assert stop.is_set() and popen.proc.signals == [signal.SIGTERM]
      with pytest.raises(SystemExit) as exit_info:
        sweep_runner.handle_signal(stop, signal.SIGINT)
      assert exit_info.value.code == 75
      assert popen.proc.signals == [signal.SIGTERM, signal.SIGINT]
    finally:
      popen.proc.release.set()
    assert status.result() == 'interrupted'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return conftest.make_idx_dir(str(tmp_path_factory.mktemp('data')),
                               num_train=64, num_test=20)


def run_sweep_cli(workdir, data_dir, *extra, env=None):
  args = ['sweep.py', f'--workdir={workdir}',
          '--config=configs/default.py', f'--config.data_dir={data_dir}',
          '--config.batch_size=8', '--config.eval_batch_size=20',
          '--config.num_train_steps=16', '--config.log_every_steps=8',
          '--config.checkpoint_every_steps=8', *extra]
  return conftest.run_python(args, env=env, timeout=TIMEOUT)


@pytest.mark.slow
def test_sweep_runs_resumes_and_reports(tmp_path, data_dir):
  workdir = str(tmp_path / 'sweep')
  sweep_args = ['--sweep=learning_rate=0.01,0.05', '--parallel=2']
  result = run_sweep_cli(workdir, data_dir, *sweep_args)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = read_csv(workdir)
  assert [(r['learning_rate'], r['status']) for r in rows] in (
      [('0.01', 'done'), ('0.05', 'done')],
      [('0.05', 'done'), ('0.01', 'done')])
  best = [float(r['best_test_accuracy']) for r in rows]
  assert best == sorted(best, reverse=True)
  for name in ('sweep.md', 'sweep.png'):
    assert os.path.isfile(os.path.join(workdir, name))
  trial_dir = os.path.join(workdir, 'learning_rate=0.05')
  summary = json.load(open(os.path.join(trial_dir, 'summary.json')))
  assert summary['config']['learning_rate'] == 0.05
  assert summary['config']['num_train_steps'] == 16
  # main.py's speed settings are recorded (distributed, host_memory).
  assert 'ynn_fusion_type' in summary['runtime']['xla_flags']
  assert summary['runtime']['malloc'].startswith('glibc mallopt')

  # Again: nothing is retrained.
  mtime = os.path.getmtime(os.path.join(trial_dir, 'summary.json'))
  again = run_sweep_cli(workdir, data_dir, *sweep_args)
  assert again.returncode == 0
  assert again.stdout.count('done, skipped') == 2
  assert os.path.getmtime(os.path.join(trial_dir, 'summary.json')) == mtime

  # An interrupted sweep (every trial killed at step 12) resumes to the same
  # numbers as the uninterrupted one.
  interrupted = str(tmp_path / 'interrupted')
  killed = run_sweep_cli(interrupted, data_dir, *sweep_args,
                         env={'TRAINER_FAULT': 'kill:step:12'})
  assert killed.returncode == 75  # Killed trials are resumable, not failed.
  assert {r['status'] for r in read_csv(interrupted)} == {'interrupted'}
  resumed = run_sweep_cli(interrupted, data_dir, *sweep_args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  for row, ref in zip(sorted(read_csv(interrupted), key=lambda r: r['trial']),
                      sorted(rows, key=lambda r: r['trial'])):
    for key in ('status', 'train_loss', 'test_loss', 'test_accuracy'):
      assert row[key] == ref[key], (row['trial'], key)


@pytest.mark.slow
def test_failed_trial_is_recorded_and_others_finish(tmp_path, data_dir):
  workdir = str(tmp_path / 'sweep')
  result = run_sweep_cli(workdir, data_dir, '--sweep=learning_rate=0.01,1e6',
                         '--parallel=2')
  assert result.returncode == 1
  rows = {r['learning_rate']: r for r in read_csv(workdir)}
  assert rows['0.01']['status'] == 'done'
  assert rows['1000000.0']['status'] == 'failed'
  assert 'not finite' in rows['1000000.0']['error']
