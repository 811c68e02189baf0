"""Hyperparameter sweeps: trial specs, running trials, and the result table.

A trial is a dict of config overrides. Each runs as `main.py` in its own
process and its own workdir, named after its overrides, so a sweep resumes
the way a single run does: finished trials (summary.json present) are
skipped, interrupted ones continue from their checkpoints.
"""

import csv
import importlib.util
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
from concurrent import futures
from typing import Any, Optional, Sequence

import ml_collections

ROOT = os.path.dirname(os.path.abspath(__file__))
# As train.EXIT_PREEMPTED; not imported, to keep JAX out of this process.
EXIT_PREEMPTED = 75
_running: dict[int, subprocess.Popen] = {}
_running_lock = threading.Lock()


class SweepError(ValueError):
  """A sweep spec that cannot run; the message names the bad part."""


def parse_value(config: ml_collections.ConfigDict, key: str, text: Any):
  """Converts `text` to the type of config[key]; SweepError if it can't."""
  if key not in config:
    raise SweepError(f'unknown config key {key!r} in sweep; accepted: '
                     f'{", ".join(sorted(config.keys()))}')
  current = config[key]
  if not isinstance(text, str):  # From a sweep file: check the type only.
    text = str(text).lower() if isinstance(text, bool) else str(text)
  try:
    if isinstance(current, bool):
      if text.lower() not in ('true', 'false'):
        raise ValueError(text)
      return text.lower() == 'true'
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    return text
  except ValueError:
    raise SweepError(f'bad value {text!r} for {key} (a '
                     f'{type(current).__name__} in the config)') from None


def parse_sweep_flags(config, specs: Sequence[str]) -> list[dict]:
  """['lr=0.1,0.2', 'batch_size=32,64'] -> the cross product of overrides."""
  axes = []
  for spec in specs:
    key, sep, values = spec.partition('=')
    if not sep or not key:
      raise SweepError(f'--sweep={spec!r} is not KEY=V1,V2,...')
    items = [v.strip() for v in values.split(',') if v.strip()]
    if not items:
      raise SweepError(f'--sweep={spec!r} lists no values')
    if key in [k for k, _ in axes]:
      raise SweepError(f'--sweep names {key!r} twice')
    axes.append((key, [parse_value(config, key, v) for v in items]))
  keys = [k for k, _ in axes]
  return [dict(zip(keys, combo))
          for combo in itertools.product(*[v for _, v in axes])]


def load_sweep_file(config, path: str) -> list[dict]:
  """Trials from a Python file whose get_sweep() returns override dicts."""
  if not os.path.isfile(path):
    raise SweepError(f'--sweep_file {path!r} does not exist')
  spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'{path} has no get_sweep() function')
  trials = module.get_sweep()
  if not isinstance(trials, list) or not trials or not all(
      isinstance(t, dict) and t for t in trials):
    raise SweepError(f'{path}: get_sweep() must return a non-empty list of '
                     f'non-empty {{key: value}} dicts')
  return [{k: parse_value(config, k, v) for k, v in t.items()}
          for t in trials]


def build_trials(config, specs, sweep_file, fixed_keys=()) -> list[dict]:
  trials = parse_sweep_flags(config, specs) if specs else []
  if sweep_file:
    trials += load_sweep_file(config, sweep_file)
  if not trials:
    raise SweepError('nothing to sweep: give --sweep=KEY=V1,V2 or '
                     '--sweep_file')
  for key in {k for t in trials for k in t}:
    if key in fixed_keys:
      raise SweepError(f'{key!r} is both fixed (--config.{key}) and swept')
  unique = []
  for trial in trials:
    if trial not in unique:
      unique.append(trial)
  return unique


def format_value(value) -> str:
  return str(value).lower() if isinstance(value, bool) else str(value)


def trial_name(trial: dict) -> str:
  """A readable folder name: 'learning_rate=0.05,batch_size=64'."""
  text = ','.join(f'{k}={format_value(v)}' for k, v in trial.items())
  return re.sub(r'[^A-Za-z0-9_.,=+-]', '_', text)


def trial_status(workdir: str) -> str:
  if os.path.isfile(os.path.join(workdir, 'summary.json')):
    return 'done'
  if os.path.isfile(os.path.join(workdir, 'failed.json')):
    return 'failed'
  if os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return 'interrupted'
  return 'pending'


def stop_running(signum=signal.SIGTERM):
  """Asks every running trial to checkpoint and stop."""
  with _running_lock:
    for proc in _running.values():
      proc.send_signal(signum)


def run_trial(workdir, config_file, fixed, trial, device=None) -> str:
  """Runs one trial to its end in a child process; returns its status."""
  os.makedirs(workdir, exist_ok=True)
  args = [sys.executable, os.path.join(ROOT, 'main.py'),
          f'--workdir={workdir}', f'--config={config_file}', *fixed,
          *[f'--config.{k}={format_value(v)}' for k, v in trial.items()]]
  env = dict(os.environ)
  if device is not None:
    env['CUDA_VISIBLE_DEVICES'] = str(device)
  log_path = os.path.join(workdir, 'train.log')
  with open(log_path, 'a') as log:
    start = log.tell()
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=ROOT, start_new_session=True)
    with _running_lock:
      _running[proc.pid] = proc
    code = proc.wait()
    with _running_lock:
      _running.pop(proc.pid, None)
  if code == 0:
    return 'done'
  if code == EXIT_PREEMPTED or code < 0:
    return 'interrupted'
  with open(log_path) as f:
    f.seek(start)
    errors = [l.strip() for l in f if l.startswith('error:')]
  with open(os.path.join(workdir, 'failed.json'), 'w') as f:
    json.dump({'exit_code': code,
               'error': errors[-1] if errors else f'exit code {code}; see '
                                                   f'{log_path}'}, f)
  return 'failed'


def collect(workdir: str, trial: dict) -> dict:
  """One row of the result table."""
  row = {'trial': trial_name(trial), **{k: format_value(v)
                                         for k, v in trial.items()}}
  row['status'] = trial_status(workdir)
  if row['status'] == 'done':
    summary = json.load(open(os.path.join(workdir, 'summary.json')))
    best = max(summary['history'], key=lambda h: h['test_accuracy'])
    row.update(train_loss=summary['train_loss'],
               train_accuracy=summary['train_accuracy'],
               test_loss=summary['test_loss'],
               test_accuracy=summary['test_accuracy'],
               best_test_accuracy=best['test_accuracy'],
               best_epoch=best['epoch'],
               wall_seconds=summary['wall_seconds'])
    row['history'] = summary['history']
  elif row['status'] == 'failed':
    row['error'] = json.load(open(os.path.join(workdir, 'failed.json')))[
        'error']
  return row


def run_sweep(workdir, config_file, fixed, trials, *, parallel=1,
              visible_devices=(), retry_failed=False,
              stop: Optional[threading.Event] = None) -> list[dict]:
  """Runs the trials that are not finished, `parallel` at a time."""
  stop = stop or threading.Event()
  todo = []
  for trial in trials:
    path = os.path.join(workdir, trial_name(trial))
    status = trial_status(path)
    if status == 'done' or (status == 'failed' and not retry_failed):
      print(f'[sweep] {trial_name(trial)}: {status}, skipped', flush=True)
      continue
    if status == 'failed':
      os.remove(os.path.join(path, 'failed.json'))
    todo.append((trial, path))
  slots = list(range(parallel))
  slots_lock = threading.Lock()

  def work(item):
    trial, path = item
    if stop.is_set():
      return
    with slots_lock:
      slot = slots.pop(0)
    try:
      device = (visible_devices[slot % len(visible_devices)]
                if visible_devices else None)
      print(f'[sweep] {trial_name(trial)}: running', flush=True)
      status = run_trial(path, config_file, fixed, trial, device)
      print(f'[sweep] {trial_name(trial)}: {status}', flush=True)
    finally:
      with slots_lock:
        slots.append(slot)

  with futures.ThreadPoolExecutor(max_workers=parallel) as pool:
    list(pool.map(work, todo))
  return [collect(os.path.join(workdir, trial_name(t)), t) for t in trials]


def _sort_key(row):
  order = {'done': 0, 'interrupted': 1, 'pending': 2, 'failed': 3}
  return (order[row['status']], -row.get('best_test_accuracy', 0.0))


COLUMNS = ['status', 'train_loss', 'train_accuracy', 'test_loss',
           'test_accuracy', 'best_test_accuracy', 'best_epoch',
           'wall_seconds', 'error']


def write_reports(workdir: str, rows: list[dict]) -> str:
  """Writes sweep.csv, sweep.md and sweep.png; returns the markdown table."""
  rows = sorted(rows, key=_sort_key)
  keys = []
  for row in rows:
    for key in row:
      if key not in keys and key not in COLUMNS + ['trial', 'history']:
        keys.append(key)
  header = ['trial'] + keys + COLUMNS
  with open(os.path.join(workdir, 'sweep.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=header, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)

  def cell(row, key):
    value = row.get(key, '')
    return f'{value:.4f}' if isinstance(value, float) else str(value)

  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(cell(r, k) for k in header) + ' |'
            for r in rows]
  table = '\n'.join(lines) + '\n'
  with open(os.path.join(workdir, 'sweep.md'), 'w') as f:
    f.write(table)
  import plots  # pylint: disable=g-import-not-at-top
  plots.plot_sweep({r['trial']: r['history'] for r in rows if 'history' in r},
                   os.path.join(workdir, 'sweep.png'))
  return table


def sweep_and_report(workdir, config, config_file, fixed, specs, sweep_file,
                     *, parallel, visible_devices, retry_failed) -> int:
  """The sweep command: checks the spec, runs, reports; returns exit code."""
  fixed_keys = [a.split('=', 1)[0][len('--config.'):] for a in fixed]
  try:
    trials = build_trials(config, specs, sweep_file, fixed_keys)
    if parallel < 1:
      raise SweepError(f'--parallel must be >= 1, got {parallel}')
  except SweepError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  os.makedirs(workdir, exist_ok=True)
  print(f'[sweep] {len(trials)} trials in {workdir}', flush=True)
  stop = threading.Event()

  def handle(signum, frame):
    del frame
    if stop.is_set():
      os._exit(128 + signum)  # pylint: disable=protected-access
    stop.set()
    print(f'[sweep] {signal.Signals(signum).name}: running trials save a '
          f'checkpoint and stop; run the same command again to continue',
          file=sys.stderr, flush=True)
    stop_running(signal.SIGTERM)

  signal.signal(signal.SIGTERM, handle)
  signal.signal(signal.SIGINT, handle)
  rows = run_sweep(workdir, config_file, fixed, trials, parallel=parallel,
                   visible_devices=visible_devices,
                   retry_failed=retry_failed, stop=stop)
  print(write_reports(workdir, rows), flush=True)
  if any(r['status'] == 'failed' for r in rows):
    return 1
  if stop.is_set() or any(r['status'] != 'done' for r in rows):
    print('[sweep] unfinished trials: run the same command again to '
          'continue', file=sys.stderr)
    return EXIT_PREEMPTED
  return 0
