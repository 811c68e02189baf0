"""Hyperparameter sweeps: trial specs and running the trials.

A trial is a dict of config overrides. Each runs as `main.py` in its own
process and its own workdir, named after its overrides, so a sweep resumes
the way a single run does: finished trials (summary.json present) are
skipped, interrupted ones continue from their checkpoints. The config.json
main.py leaves in a trial's workdir says what the trial was run with; a rerun
whose base config or fixed overrides differ is refused rather than mixed in.
Before anything is created, every trial to run has its whole config checked
by config_rules in one child process (this one never imports JAX). What the
trials leave is read and tabled by sweep_report.
"""

import copy
import functools
import itertools
import json
import math
import os
import re
import reprlib
import runpy
import signal
import subprocess
import sys
import threading
import traceback
from concurrent import futures
from typing import Any, Callable, Optional, Sequence

import ml_collections

import cli
import sweep_report
import workdir_files

ROOT = os.path.dirname(os.path.abspath(__file__))
MAIN = os.path.join(ROOT, 'main.py')
# A child that dies of one of these (or exits 128 + it, as shells and
# re-raising handlers report it) was stopped, not broken: it resumes.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGKILL)
ACCEPTED = {bool: 'true or false', int: 'an integer',
            float: 'a finite number'}
# A key of a constructor's options dict, as cli takes --config.NAME_kwargs.KEY:
# it may be one the config file does not list.
KWARGS_KEY = re.compile(r'\w+_kwargs\.\w+')
# How long the child that checks the trials' configs may take (it imports
# JAX and Flax, about 2 s); past it the trials check their own.
CHECK_TIMEOUT_SECONDS = 120
# The child: a JSON list of config dicts on stdin; out, as the last line of
# stdout, [kind, message] per config: kind 'ok', 'invalid' (a rule it breaks)
# or 'raised' (the check itself failed, as it would in main.py). Its import
# path is main.py's (the project's folder first, not the current one).
_CHECK_CONFIGS = '''
import json, sys
sys.path[0] = sys.argv[1]
import ml_collections
import config_rules
results = []
for config in json.load(sys.stdin):
  try:
    config_rules.validate_config(ml_collections.ConfigDict(config),
                                 device_count=1, training=True)
    results.append(['ok', ''])
  except config_rules.ConfigError as e:
    results.append(['invalid', str(e)])
  except Exception as e:  # pylint: disable=broad-except
    results.append(['raised', f'{type(e).__name__}: {e}'])
print(json.dumps(results))
'''
_running: dict[int, subprocess.Popen] = {}
_running_lock = threading.Lock()


class SweepError(ValueError):
  """A sweep spec that cannot run; the message names the bad part.

  `details`, if given, is the traceback behind it (a sweep file's own),
  shown at --verbosity=1.
  """

  def __init__(self, message: str, details: Optional[str] = None):
    super().__init__(message)
    self.details = details


def current_value(config: ml_collections.ConfigDict,
                  key: str) -> tuple[bool, Any]:
  """(True, value) of `key` ('lr', 'model_kwargs.stem') in `config`, or
  (False, None) for a NAME_kwargs key the config does not list yet;
  SweepError for a key main.py would not take."""
  *parents, leaf = key.split('.')
  node = config
  for part in parents:
    node = node.get(part) if isinstance(node, ml_collections.ConfigDict) \
        else None
  if isinstance(node, ml_collections.ConfigDict):
    if leaf in node:
      return True, node[leaf]
    if KWARGS_KEY.fullmatch(key):
      return False, None
  kwargs = [k for k in config if k.endswith('_kwargs')]
  raise SweepError(
      f'unknown config key {key!r} in sweep; accepted: '
      f'{", ".join(sorted(config.keys()))}' +
      ''.join(f', {k}.KEY' for k in kwargs))


def parse_value(config: ml_collections.ConfigDict, key: str, text: Any):
  """Converts `text` to the type of config[key]; SweepError if it can't.

  A NAME_kwargs.KEY the config lacks takes its value as main.py reads it
  (cli.parse_value); the config's rules check it before the sweep runs.
  """
  found, current = current_value(config, key)
  if isinstance(current, ml_collections.ConfigDict):
    raise SweepError(f'{key} is a dict of options; accepted: its keys, one '
                     f'at a time (--sweep={key}.KEY=V1,V2)')
  if not isinstance(text, str):  # From a sweep file: check the type only.
    text = format_value(text)
  if not found or not isinstance(current, (bool, int, float)):
    try:
      value = cli.parse_value(text, current) if '.' in key else text
    except ValueError as e:
      raise SweepError(f'bad value {text!r} for {key}; accepted: '
                       f'{e}') from None
    if isinstance(value, float) and not math.isfinite(value):
      raise SweepError(f'bad value {text!r} for {key}; accepted: a finite '
                       f'number')
    return value
  try:
    if isinstance(current, bool):
      if text.lower() not in ('true', 'false'):
        raise ValueError(text)
      return text.lower() == 'true'
    if isinstance(current, int):
      return int(text)
    if not math.isfinite(float(text)):
      raise ValueError(text)
    return float(text)
  except ValueError:
    kind = type(current)
    raise SweepError(f'bad value {text!r} for {key} (a {kind.__name__} in '
                     f'the config; accepted: {ACCEPTED[kind]})') from None


def split_values(text: str) -> list[str]:
  """'0.1, 0.2' -> ['0.1', '0.2']; a comma inside brackets stays, so that a
  tuple is one value: '(8,16),(16,32)' -> ['(8,16)', '(16,32)']."""
  items, depth, start = [], 0, 0
  for i, char in enumerate(text):
    depth = max(0, depth + (char in '([{') - (char in ')]}'))
    if char == ',' and not depth:
      items.append(text[start:i])
      start = i + 1
  return [v.strip() for v in items + [text[start:]] if v.strip()]


def parse_sweep_flags(config, specs: Sequence[str]) -> list[dict]:
  """['lr=0.1,0.2', 'batch_size=32,64'] -> the cross product of overrides."""
  axes = {}
  for spec in specs:
    key, sep, values = spec.partition('=')
    if not sep or not key:
      raise SweepError(f'--sweep={spec!r} is not KEY=V1,V2,...')
    items = split_values(values)
    if not items:
      raise SweepError(f'--sweep={spec!r} lists no values; accepted: '
                       f'{key}=V1,V2,... with at least one value')
    if key in axes:
      raise SweepError(f'--sweep names {key!r} twice ({spec!r} and an '
                       f'earlier one); accepted: one --sweep={key}=V1,V2,... '
                       f'listing all its values')
    axes[key] = [parse_value(config, key, v) for v in items]
  return [dict(zip(axes, combo)) for combo in itertools.product(
      *axes.values())]


def _call_get_sweep(path: str):
  """What get_sweep() of the Python file at `path` returns."""
  accepted = 'accepted: a Python file defining get_sweep()'
  if not os.path.isfile(path):
    raise SweepError(f'--sweep_file {path!r} does not exist; {accepted}')
  try:
    get_sweep = runpy.run_path(path).get('get_sweep')
  except Exception as e:  # pylint: disable=broad-except
    raise SweepError(f'--sweep_file {path!r} does not load '
                     f'({one_line(e)}); {accepted}',
                     _user_traceback(e)) from None
  if not callable(get_sweep):
    raise SweepError(f'--sweep_file {path!r} has no get_sweep(); {accepted}')
  try:
    return get_sweep()
  except Exception as e:  # pylint: disable=broad-except
    raise SweepError(f'--sweep_file {path!r}: get_sweep() raised '
                     f'{one_line(e)}', _user_traceback(e)) from None


def one_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return type(error).__name__ + (f': {lines[0]}' if lines else '')


def _user_traceback(error: Exception) -> str:
  """The traceback of `error` from the first frame outside this module and
  runpy: the user's file and what it called."""
  tb = error.__traceback__
  while tb is not None and tb.tb_frame.f_globals.get('__name__') in (
      __name__, 'runpy'):
    tb = tb.tb_next
  return ''.join(traceback.format_exception(type(error), error, tb))


def load_sweep_file(config, path: str) -> list[dict]:
  """Trials from a Python file whose get_sweep() returns override dicts."""
  trials = _call_get_sweep(path)
  if not isinstance(trials, list) or not trials or not all(
      isinstance(t, dict) and t for t in trials):
    raise SweepError(f'--sweep_file {path!r}: get_sweep() returned '
                     f'{reprlib.repr(trials)}; accepted: a non-empty list of '
                     f'non-empty {{key: value}} dicts')
  return [{k: parse_value(config, k, v) for k, v in t.items()}
          for t in trials]


def build_trials(config, specs, sweep_file, fixed_keys=()) -> list[dict]:
  """The trials of --sweep and --sweep_file, each once; SweepError if bad."""
  trials = parse_sweep_flags(config, specs) if specs else []
  if sweep_file:
    trials += load_sweep_file(config, sweep_file)
  if not trials:
    raise SweepError('nothing to sweep: give --sweep=KEY=V1,V2 or '
                     '--sweep_file')
  for key in {k for t in trials for k in t}:
    if key in fixed_keys:
      raise SweepError(f'{key!r} is both fixed (--config.{key}) and swept; '
                       f'accepted: one of the two')
  unique = []
  for trial in trials:
    if trial not in unique:
      unique.append(trial)
  check_folder_names(unique)
  return unique


def check_folder_names(trials: Sequence[dict]):
  """SweepError if two trials would share a workdir (names drop characters)."""
  names = {}
  for trial in trials:
    other = names.setdefault(trial_name(trial), trial)
    if other is not trial:
      raise SweepError(f'trials {other} and {trial} would share the folder '
                       f'{trial_name(trial)!r}; accepted: values that differ '
                       f'in letters, digits or _.,=+-')


def check_options(workdir: str, parallel: int, visible_devices: Sequence[str]):
  """SweepError for a --workdir, --parallel or --visible_devices unusable."""
  if parallel < 1:
    raise SweepError(f'--parallel={parallel}; accepted: an integer >= 1')
  if any(not d.strip() for d in visible_devices):
    raise SweepError(f'--visible_devices={",".join(visible_devices)!r} has '
                     f'an empty id; accepted: GPU ids such as 0,1,2,3')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise SweepError(f'--workdir {workdir!r} is an existing file; accepted: '
                     f'a folder, new or from an earlier run of this sweep')


def format_value(value) -> str:
  return str(value).lower() if isinstance(value, bool) else str(value)


def override_args(overrides: dict) -> list[str]:
  """{key: value} -> ['--config.KEY=VALUE', ...], as main.py parses back."""
  return [f'--config.{k}={format_value(v)}' for k, v in overrides.items()]


def trial_name(trial: dict) -> str:
  """A readable folder name: 'learning_rate=0.05,batch_size=64'."""
  text = ','.join(f'{k}={format_value(v)}' for k, v in trial.items())
  return re.sub(r'[^A-Za-z0-9_.,=+-]', '_', text)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict):
  """Sets each {key: value} of `overrides` in `config` as main.py does; a
  dotted key ('model_kwargs.stem') sets a key of a nested dict, new or not."""
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part]
    with node.unlocked():
      node[leaf] = value


def expected_config(config: ml_collections.ConfigDict, trial: dict) -> dict:
  """The config.json main.py writes for `trial`, as json.load reads it."""
  config = copy.deepcopy(config)  # Keeps references: a linked key follows.
  apply_overrides(config, trial)
  return json.loads(json.dumps(config.to_dict()))


def check_recorded_configs(workdir: str, config, trials: Sequence[dict]):
  """SweepError if a trial's folder holds a run of another config.

  Folders are named after the swept keys only, so without this a rerun with
  another base config or fixed override would take old results as its own.
  """
  for trial in trials:
    try:
      recorded = workdir_files.read_json(
          os.path.join(workdir, trial_name(trial)), workdir_files.CONFIG)
    except workdir_files.WorkdirError as e:
      raise SweepError(f'trial {trial_name(trial)}: {e}') from None
    if recorded is None:
      continue
    wanted = expected_config(config, trial)
    key = _first_difference(recorded, wanted)
    if key:
      raise SweepError(
          f'trial {trial_name(trial)} in {workdir} was run with '
          f'{_show(recorded, key)}, this sweep gives {_show(wanted, key)}; '
          f'accepted: the base config and fixed --config values it was run '
          f'with, or another --workdir')


def _first_difference(recorded: dict, wanted: dict) -> Optional[str]:
  """The first key (in `wanted`'s order) whose value or presence differs;
  inside nested dicts, as 'model_kwargs.stem'."""
  recorded, wanted = _flatten(recorded), _flatten(wanted)
  for key in [*wanted, *(k for k in recorded if k not in wanted)]:
    if (key in recorded) != (key in wanted) or (
        recorded.get(key) != wanted.get(key)):
      return key
  return None


def _flatten(config: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}; an empty dict stays a value."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict) and value:
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _show(config: dict, key: str) -> str:
  config = _flatten(config)
  return f'{key}={config[key]!r}' if key in config else f'no {key}'


def check_configs_in_child(configs: Sequence[dict]) -> list[list[str]]:
  """[kind, message] per config dict from config_rules, checked in one child
  process (the rules import JAX); RuntimeError saying why if it gives no
  answer."""
  # No GPU is needed to build a module; none is taken from the trials.
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  try:
    child = subprocess.run(
        [sys.executable, '-c', _CHECK_CONFIGS, ROOT], input=json.dumps(
            list(configs)), capture_output=True, text=True, env=env,
        timeout=CHECK_TIMEOUT_SECONDS)
  except subprocess.TimeoutExpired:
    raise RuntimeError(f'the check took over {CHECK_TIMEOUT_SECONDS} '
                       f's') from None
  except OSError as e:
    raise RuntimeError(one_line(e)) from None
  try:
    results = json.loads(child.stdout.strip().splitlines()[-1])
    if len(results) != len(configs):
      raise ValueError
    return results
  except (ValueError, IndexError):
    errors = child.stderr.strip().splitlines()
    raise RuntimeError(errors[-1].strip() if errors else
                       f'the check exited {child.returncode}') from None


def check_trial_configs(config: ml_collections.ConfigDict,
                        trials: Sequence[dict]):
  """SweepError naming the first trial whose whole config breaks one of
  config_rules' rules, and the rule.

  As on one device: how many a trial will see is not known here. A check
  that gives no answer leaves it to the trials, each in its own main.py.
  """
  if not trials:
    return
  try:
    results = check_configs_in_child(
        [expected_config(config, t) for t in trials])
  except RuntimeError as e:
    print(f'[sweep] warning: the trials\' configs were not checked before '
          f'the run ({e}); each trial checks its own', file=sys.stderr,
          flush=True)
    return
  bad = [(t, kind, message) for t, (kind, message) in zip(trials, results)
         if kind != 'ok']
  if bad:
    trial, kind, message = bad[0]
    others = len(bad) - 1
    more = (f' ({others} other{"s" * (others > 1)} of the {len(trials)} '
            f'trials to run {"are" if others > 1 else "is"} invalid too)'
            if others else '')
    if kind == 'raised':
      message = f'the config check raised {message}'
    raise SweepError(f'trial {trial_name(trial)}: {message}{more}; nothing '
                     f'was run')


def exit_status(code: int) -> str:
  """'done', 'interrupted' (resumable) or 'failed', from main.py's code."""
  if code == 0:
    return 'done'
  if code == cli.EXIT_PREEMPTED or code < 0 or code - 128 in STOP_SIGNALS:
    return 'interrupted'
  return 'failed'


def stop_running(signum=signal.SIGTERM):
  """Asks every running trial to checkpoint and stop."""
  with _running_lock:
    for proc in _running.values():
      proc.send_signal(signum)


def handle_signal(stop: threading.Event, signum, frame=None):
  """First signal: running trials checkpoint and stop, no new one starts.

  A second one is passed on (main.py's last resort: stop at once) and ends
  the sweep with EXIT_PREEMPTED; what was saved resumes on a rerun.

  Args:
    stop: set by the first signal; run_trial starts nothing once it is set.
    signum: the signal.
    frame: unused.
  """
  del frame
  name = signal.Signals(signum).name
  if stop.is_set():
    print(f'[sweep] second {name}: stopping now; run the same command '
          f'again to continue', file=sys.stderr, flush=True)
    stop_running(signum)
    os._exit(cli.EXIT_PREEMPTED)  # pylint: disable=protected-access
  stop.set()
  print(f'[sweep] {name}: running trials save a checkpoint and stop; run '
        f'the same command again to continue', file=sys.stderr, flush=True)
  stop_running(signal.SIGTERM)


def _stop_with_parent():
  """In the child before main.py starts: SIGTERM when the sweep dies (even
  of kill -9), so a trial checkpoints and stops rather than train on
  unwatched while a rerun resumes it. Linux only (prctl); elsewhere the
  child outlives the sweep as before."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
  except (OSError, AttributeError):
    pass


def _start(args, log, env, stop) -> Optional[subprocess.Popen]:
  """Starts main.py unless `stop` is set; None if it is.

  The check and the start hold the lock stop_running takes, so a signal
  that comes in between finds the child registered and stops it.
  """
  with _running_lock:
    if stop is not None and stop.is_set():
      return None
    # No cwd: the child starts where the user does, so relative paths
    # (--config, data_dir) mean what they mean to main.py run from there.
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True,
                            preexec_fn=_stop_with_parent)
    _running[proc.pid] = proc
  return proc


def run_trial(workdir, config_file, fixed, trial, device=None, stop=None,
              on_start: Optional[Callable[[str], None]] = None,
              watch: Optional[Callable[[subprocess.Popen], None]] = None
              ) -> Optional[str]:
  """Runs one trial to its end in a child process.

  Args:
    workdir: the trial's own folder.
    config_file: the base config, as main.py's --config.
    fixed: {key: value} overrides of every trial.
    trial: {key: value} overrides of this one.
    device: CUDA_VISIBLE_DEVICES for the child; None leaves it alone.
    stop: once set, the trial does not start.
    on_start: called with the path of the trial's log (the child's output)
      once the child has started.
    watch: called with the child's process once it has started; returns
      when the child has ended (a search's pruner and lease).

  Returns:
    'done', 'interrupted' or 'failed'; None if `stop` kept it from starting.
  """
  os.makedirs(workdir, exist_ok=True)
  args = [sys.executable, MAIN, f'--workdir={workdir}',
          f'--config={config_file}', *override_args({**fixed, **trial})]
  env = dict(os.environ)
  # For trackers (trackers.py): the sweep and trial a run belongs to, and
  # one MLflow database for all of a sweep's trials, in the sweep's folder.
  sweep_dir = os.path.dirname(os.path.abspath(workdir))
  env.update({'TRAINER_SWEEP_NAME': os.path.basename(sweep_dir),
              'TRAINER_TRIAL_NAME': os.path.basename(workdir)})
  env.setdefault('MLFLOW_TRACKING_URI',
                 f'sqlite:///{os.path.join(sweep_dir, "mlflow.db")}')
  if device is not None:
    env['CUDA_VISIBLE_DEVICES'] = str(device)
  log_path = os.path.join(workdir, workdir_files.TRAIN_LOG)
  with open(log_path, 'a') as log:
    start = log.tell()
    proc = _start(args, log, env, stop)
    if proc is None:
      return None
    if on_start:
      on_start(log_path)
    if watch:
      watch(proc)
    code = proc.wait()
    with _running_lock:
      _running.pop(proc.pid, None)
  status = exit_status(code)
  if status == 'failed':
    with open(log_path) as f:
      f.seek(start)
      errors = [l.strip() for l in f if l.startswith('error:')]
    workdir_files.write_json(os.path.join(workdir, workdir_files.FAILED), {
        'exit_code': code,
        'error': errors[-1] if errors else f'exit code {code}; see '
                                           f'{log_path}'})
  return status


def trials_to_run(workdir: str, trials: Sequence[dict],
                  retry_failed: bool) -> list[dict]:
  """The trials not finished: not done, and not failed unless retried."""
  return [t for t in trials if sweep_report.trial_status(
      os.path.join(workdir, trial_name(t))) not in (
          ('done',) if retry_failed else ('done', 'failed'))]


def run_sweep(workdir, config_file, fixed, trials, *, parallel=1,
              visible_devices=(), retry_failed=False,
              stop: Optional[threading.Event] = None) -> list[dict]:
  """Runs the trials that are not finished, `parallel` at a time; returns
  every trial's row of the result table (sweep_report.collect)."""
  stop = stop or threading.Event()
  to_run = trials_to_run(workdir, trials, retry_failed)
  todo = []
  for trial in trials:
    path = os.path.join(workdir, trial_name(trial))
    status = sweep_report.trial_status(path)
    if trial not in to_run:
      print(f'[sweep] {trial_name(trial)}: {status}, skipped', flush=True)
      continue
    if status == 'failed':
      os.remove(os.path.join(path, workdir_files.FAILED))
    todo.append((trial, path))
  progress = sweep_report.Progress(len(todo), parallel)
  slots = list(range(parallel))
  slots_lock = threading.Lock()

  def work(item):
    trial, path = item
    name = trial_name(trial)
    with slots_lock:
      slot = slots.pop(0)
    try:
      device = (visible_devices[slot % len(visible_devices)]
                if visible_devices else None)
      status = run_trial(path, config_file, fixed, trial, device, stop,
                         on_start=functools.partial(progress.start, name))
      if status:
        progress.end(name, status, path)
    finally:
      with slots_lock:
        slots.append(slot)

  with futures.ThreadPoolExecutor(max_workers=parallel) as pool:
    list(pool.map(work, todo))
  rows = []
  for trial in trials:
    name = trial_name(trial)
    rows.append(sweep_report.collect(
        os.path.join(workdir, name), name,
        {k: format_value(v) for k, v in trial.items()}))
  return rows


def report_error(error: SweepError, verbose: bool):
  """The one `error:` line; at --verbosity=1 a sweep file's traceback
  first."""
  hint = ''
  if error.details and verbose:
    sys.stderr.write(error.details)
    sys.stderr.flush()
  elif error.details:
    hint = ' (run with --verbosity=1 for the traceback)'
  cli.print_line(f'error: {error}{hint}')


def sweep_and_report(workdir, config, config_file, fixed, specs, sweep_file,
                     *, parallel, visible_devices, retry_failed,
                     verbose=False, array_index=None) -> int:
  """The sweep command: checks the spec, runs, reports; returns exit code.

  Args:
    workdir: the sweep's folder; relative to the current directory.
    config: the base config with the fixed overrides applied.
    config_file: the base config's file, as main.py's --config.
    fixed: {key: value}, the --config.KEY=VALUE overrides of every trial
      (also 'model_kwargs.KEY': text, as typed).
    specs: --sweep values, 'KEY=V1,V2,...'.
    sweep_file: --sweep_file or None.
    parallel: trials run at a time.
    visible_devices: GPU ids for trial slots (CUDA_VISIBLE_DEVICES).
    retry_failed: run failed trials again.
    verbose: print a sweep file's traceback before its error line.
    array_index: run only the trial at this index of the trials' order
      (a job array's task); None for all.

  Returns:
    0 all done, 1 some failed, EXIT_PREEMPTED some unfinished, 2 a bad spec
    (then nothing was created or started).
  """
  workdir = os.path.abspath(workdir)
  try:
    trials = build_trials(config, specs, sweep_file, fixed)
    check_options(workdir, parallel, visible_devices)
    if array_index is not None and array_index >= len(trials):
      print(f'[sweep] array index {array_index} is past the last trial '
            f'(the sweep has {len(trials)}: indices 0 to {len(trials) - 1})'
            f'; nothing to run', flush=True)
      return 0
    all_trials = trials
    if array_index is not None:
      trials = [trials[array_index]]
    check_recorded_configs(workdir, config, trials)
    todo = trials_to_run(workdir, trials, retry_failed)
    check_trial_configs(config, todo)
  except SweepError as e:
    report_error(e, verbose)
    return cli.EXIT_BAD_INPUT
  os.makedirs(workdir, exist_ok=True)
  print(f'[sweep] {len(trials)} trials in {sweep_report.show_path(workdir)}, '
        f'{len(todo)} to run' + (f', {parallel} at a time' if min(
            parallel, len(todo)) > 1 else ''), flush=True)
  stop = threading.Event()
  handler = functools.partial(handle_signal, stop)
  previous = {s: signal.signal(s, handler)
              for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    rows = run_sweep(workdir, config_file, fixed, trials, parallel=parallel,
                     visible_devices=visible_devices,
                     retry_failed=retry_failed, stop=stop)
  finally:
    for signum, old in previous.items():
      signal.signal(signum, old)
  if array_index is not None:  # The table of every trial so far.
    rows = [sweep_report.collect(
        os.path.join(workdir, trial_name(t)), trial_name(t),
        {k: format_value(v) for k, v in t.items()}) for t in all_trials]
    print(sweep_report.write_reports(workdir, rows), flush=True)
    rows = [r for r in rows if r['trial'] == trial_name(trials[0])]
  else:
    print(sweep_report.write_reports(workdir, rows), flush=True)
  if any(r['status'] == 'failed' for r in rows):
    return cli.EXIT_FAILED
  if stop.is_set() or any(r['status'] != 'done' for r in rows):
    print('[sweep] unfinished trials: run the same command again to '
          'continue', file=sys.stderr)
    return cli.EXIT_PREEMPTED
  return 0
