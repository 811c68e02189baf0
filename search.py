"""Searched sweeps: trials sampled and pruned by Optuna, one study shared by
every worker that runs the same command.

The study lives in the sweep's workdir (W/study.journal, Optuna's journal
file storage, which needs no database and works over NFS), or in an RDB
given by --storage. Every worker makes the study and claims trials under
one lock, Optuna's NFS-safe symlink lock on W/claims (a link is created
atomically or not at all, on any NFS version; the lock of a holder that
died is broken after LOCK_GRACE_SECONDS), so workers started together make
one study and record its space before any reads it. Under the lock a worker
either resumes a running trial whose lease has run out (its worker died: it
is one of the N trials, not replaced, and continues in its own folder from
its checkpoint) or, while the study has fewer than N trials, asks the
sampler for a new one. A running trial's lease is renewed every
lease_seconds / 3 by the worker that runs it. Optuna's journal has no
heartbeat of its own, hence the lease.

A trial is main.py in W/trial_NNN/, as a grid trial is in its folder. Its
epochs (history.json) are reported to the pruner as they are written; a
trial the pruner stops gets W/trial_NNN/pruned.json first, then SIGTERM,
which checkpoints and exits 75 through the trainer's preemption path; it is
recorded as pruned and never resumed. The objective is the best checkpoint's
accuracy on the run's selection split (validation when it has one).
"""

import dataclasses
import functools
import json
import math
import os
import pprint
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from typing import Any, Optional, Sequence

import ml_collections

import cli
import sweep_report
import sweep_runner
import workdir_files

SweepError = sweep_runner.SweepError

SEARCHES = ('random', 'tpe')
PRUNERS = ('none', 'median', 'hyperband')
STUDY_FILE = 'study.journal'
CLAIMS_FILE = 'claims'
STUDY_NAME = 'sweep'
LOCK_GRACE_SECONDS = 30
POLL_SECONDS = 0.5
# A worker with nothing to claim looks again after this many polls.
WAIT_POLLS = 4
DISTRIBUTIONS = 'loguniform(a,b), uniform(a,b), int(a,b) or choice(v1,v2,...)'
_DISTRIBUTION = re.compile(r'\s*(\w+)\s*\((.*)\)\s*\Z', re.S)
# What the study records of the command that made it: a rerun must match.
STUDY_KEYS = ('space', 'objective')


def _optuna():
  # Imported when a search runs: 1 s, and grids need none of it.
  import optuna  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna


def _number(text: str, spec: str, integer: bool = False):
  try:
    value = int(text) if integer else float(text)
  except ValueError:
    raise SweepError(f'--space={spec!r}: {text!r} is not '
                     f'{"an integer" if integer else "a number"}') from None
  if not math.isfinite(value):
    raise SweepError(f'--space={spec!r}: {text!r} is not a finite number')
  return value


def _distribution(config, key: str, kind: str, args: list, spec: str):
  """The Optuna distribution of one --space entry, checked against the
  config value's type."""
  distributions = _optuna().distributions
  found, current = sweep_runner.current_value(config, key)
  if isinstance(current, ml_collections.ConfigDict):
    raise SweepError(f'--space={spec!r}: {key} is a dict of options; '
                     f'accepted: its keys, one at a time ({key}.KEY=...)')
  if kind == 'choice':
    if not args:
      raise SweepError(f'--space={spec!r}: choice() lists no values; '
                       f'accepted: choice(v1,v2,...)')
    values = [sweep_runner.parse_value(config, key, a) for a in args]
    if any(not isinstance(v, (bool, int, float, str)) for v in values):
      raise SweepError(f'--space={spec!r}: accepted: choice() of numbers, '
                       f'booleans or strings')
    if len(set(map(repr, values))) != len(values):
      raise SweepError(f'--space={spec!r}: choice() names a value twice')
    return distributions.CategoricalDistribution(values)
  if len(args) != 2:
    raise SweepError(f'--space={spec!r}: {kind}() takes two numbers, a < b')
  numeric = not found or (isinstance(current, (int, float)) and
                          not isinstance(current, bool))
  if not numeric:
    raise SweepError(f'--space={spec!r}: {key} is a '
                     f'{type(current).__name__} in the config; accepted: '
                     f'choice(v1,v2,...)')
  is_int = found and isinstance(current, int)
  if is_int and kind == 'uniform':
    raise SweepError(f'--space={spec!r}: {key} is an integer in the config; '
                     f'accepted: int(a,b), loguniform(a,b) with integer '
                     f'bounds, or choice(...)')
  integer = kind == 'int' or is_int
  low, high = (_number(a, spec, integer) for a in args)
  if not low < high:
    raise SweepError(f'--space={spec!r}: accepted: {kind}(a,b) with a < b')
  log = kind == 'loguniform'
  if log and low <= 0:
    raise SweepError(f'--space={spec!r}: accepted: loguniform(a,b) with '
                     f'0 < a < b')
  if integer:
    return distributions.IntDistribution(low, high, log=log)
  return distributions.FloatDistribution(low, high, log=log)


def parse_space(config, specs: Sequence[str], fixed_keys=()) -> dict:
  """['learning_rate=loguniform(1e-3,0.3)', ...] -> {key: distribution};
  SweepError naming the bad entry and what is accepted."""
  space = {}
  for spec in specs:
    key, sep, text = spec.partition('=')
    key = key.strip()
    match = _DISTRIBUTION.match(text)
    if not sep or not key or not match:
      raise SweepError(f'--space={spec!r} is not KEY=DISTRIBUTION; accepted:'
                       f' KEY={DISTRIBUTIONS}')
    kind, args = match.group(1), sweep_runner.split_values(match.group(2))
    if kind not in ('loguniform', 'uniform', 'int', 'choice'):
      raise SweepError(f'--space={spec!r}: unknown distribution {kind!r}; '
                       f'accepted: {DISTRIBUTIONS}')
    if key in space:
      raise SweepError(f'--space names {key!r} twice; accepted: one '
                       f'distribution per key')
    if key in fixed_keys:
      raise SweepError(f'{key!r} is both fixed (--config.{key}) and '
                       f'searched; accepted: one of the two')
    space[key] = _distribution(config, key, kind, args, spec)
  if not space:
    raise SweepError(f'--search needs --space=KEY=DISTRIBUTION (one or '
                     f'more); accepted: {DISTRIBUTIONS}')
  return space


def extremes(space: dict) -> list[dict]:
  """One trial per bound of each range and per choice, the others at the
  base config's values: what the config rules check before a search."""
  trials = []
  for key, distribution in space.items():
    values = getattr(distribution, 'choices', None) or (
        distribution.low, distribution.high)
    trials += [{key: v} for v in values]
  return trials


def space_record(space: dict) -> dict:
  """{key: the distribution as JSON}, as the study records it."""
  to_json = _optuna().distributions.distribution_to_json
  return {key: json.loads(to_json(d)) for key, d in space.items()}


def objective_of(config: ml_collections.ConfigDict) -> str:
  """The summary key a trial of `config` is ranked by: the best checkpoint's
  accuracy on its selection split (validation when it holds one out or
  its image folder has validation/)."""
  validated = config.get('validation_fraction', 0) > 0 or os.path.isdir(
      os.path.join(str(config.get('data_dir', '') or ''), 'validation'))
  return f'best_{"validation" if validated else "test"}_accuracy'


@dataclasses.dataclass
class Options:
  """The search's flags."""
  search: str
  n_trials: int
  pruner: str = 'none'
  storage: str = ''
  lease_seconds: float = 60.0
  parallel: int = 1
  array_index: int = -1  # -1: not a job array's task.
  seed: int = 0
  visible_devices: Sequence[str] = ()


def check_options(options: Options):
  if options.search not in SEARCHES:
    raise SweepError(f'--search={options.search!r}; accepted: '
                     f'{", ".join(SEARCHES)} (or no --search for a grid)')
  if options.pruner not in PRUNERS:
    raise SweepError(f'--pruner={options.pruner!r}; accepted: '
                     f'{", ".join(PRUNERS)}')
  if options.n_trials < 1:
    raise SweepError(f'--n_trials={options.n_trials}; accepted: an integer '
                     f'>= 1, the study\'s total over every worker')
  if not options.lease_seconds > 0:
    raise SweepError(f'--lease_seconds={options.lease_seconds}; accepted: '
                     f'a number of seconds > 0')


def _storage(workdir: str, url: str):
  optuna = _optuna()
  if url:
    try:
      return optuna.storages.RDBStorage(url)
    except Exception as e:  # pylint: disable=broad-except
      # SQLAlchemy and the database drivers raise many types.
      raise SweepError(f'--storage={url!r} cannot be opened '
                       f'({sweep_runner.one_line(e)}); accepted: an '
                       f'SQLAlchemy URL such as sqlite:///study.db or '
                       f'postgresql://user@host/db, or none for '
                       f'W/{STUDY_FILE}') from None
  journal = optuna.storages.journal
  path = os.path.join(workdir, STUDY_FILE)
  return optuna.storages.JournalStorage(journal.JournalFileBackend(
      path, lock_obj=journal.JournalFileSymlinkLock(path)))


def _pruner(name: str):
  pruners = _optuna().pruners
  if name == 'median':
    return pruners.MedianPruner()
  if name == 'hyperband':
    return pruners.HyperbandPruner(min_resource=1)
  return pruners.NopPruner()


def _sampler(search: str, seed: int):
  samplers = _optuna().samplers
  if search == 'tpe':
    return samplers.TPESampler(seed=seed)
  return samplers.RandomSampler(seed=seed)


def _claims_lock(workdir: str):
  """The lock every worker of W takes to create the study and to claim."""
  journal = _optuna().storages.journal
  return journal.JournalFileSymlinkLock(
      os.path.join(workdir, CLAIMS_FILE), grace_period=LOCK_GRACE_SECONDS)


def open_study(workdir: str, options: Options, space: dict, objective: str,
               create: bool):
  """The sweep's study; SweepError if it was made with another space or
  objective. With create=True it is made (under the claims lock, so that
  workers started together make one study and record its space before any
  reads it; W must exist). With create=False, None when there is none yet,
  or while another worker is making it (nothing is written then)."""
  if not options.storage and not os.path.isfile(
      os.path.join(workdir, STUDY_FILE)) and not create:
    return None
  if not create:
    return _load_study(workdir, options, space, objective, create)
  lock = _claims_lock(workdir)
  lock.acquire()
  try:
    return _load_study(workdir, options, space, objective, create)
  finally:
    lock.release()


def _load_study(workdir, options, space, objective, create):
  optuna = _optuna()
  storage = _storage(workdir, options.storage)
  wanted = {'space': space_record(space), 'objective': objective}
  try:
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage,
                              pruner=_pruner(options.pruner))
  except KeyError:
    if not create:
      return None
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage,
                                direction='maximize',
                                pruner=_pruner(options.pruner))
  recorded = {key: study.user_attrs.get(key) for key in STUDY_KEYS}
  missing = [key for key, value in recorded.items() if value is None]
  if missing:
    # Made by this call, or by a worker that has not yet recorded (or died
    # before recording) what it was made with.
    if not create:
      return None
    for key in missing:
      study.set_user_attr(key, wanted[key])
      recorded[key] = wanted[key]
  for key in STUDY_KEYS:
    if recorded[key] != wanted[key]:
      where = options.storage or os.path.join(workdir, STUDY_FILE)
      raise SweepError(
          f'the study in {where} was made with {key} {_show(recorded[key])}, '
          f'this command gives {key} {_show(wanted[key])}; accepted: the '
          f'same '
          f'{key}, or another --workdir (or --storage)')
  return study


def _show(value) -> str:
  if isinstance(value, dict) and all(isinstance(v, dict) for v in
                                     value.values()):
    return ', '.join(f'{k}={_describe(v)}' for k, v in value.items())
  return str(value)


def _describe(record: dict) -> str:
  """A distribution's JSON record as the --space text that makes it."""
  kind, a = record.get('name'), record.get('attributes', {})
  if kind == 'CategoricalDistribution':
    return f'choice({",".join(map(str, a.get("choices", ())))})'
  name = 'loguniform' if a.get('log') else (
      'int' if kind == 'IntDistribution' else 'uniform')
  return f'{name}({a.get("low")},{a.get("high")})'


# Optuna's FrozenTrial keeps its storage id private, and Study its storage;
# the lease is a user attribute set through that storage by id (the one way
# to set one on a trial another process asked for).
def _trial_id(trial) -> int:
  return trial._trial_id  # pylint: disable=protected-access


def _storage_of(study):
  return study._storage  # pylint: disable=protected-access


def trial_name(number: int) -> str:
  return f'trial_{number:03d}'


@dataclasses.dataclass
class Claim:
  """A trial a worker holds: its study id, number, name and overrides."""
  trial_id: int
  number: int
  name: str
  params: dict
  resumed: bool


WAIT = object()  # Claim's answer while every trial left runs elsewhere.


class Worker:
  """Claims, runs and records trials of one study, `parallel` at a time."""

  def __init__(self, workdir, config, config_file, fixed, space, objective,
               options: Options, stop: threading.Event):
    self.workdir, self.config = workdir, config
    self.config_file, self.fixed = config_file, fixed
    self.space, self.objective, self.options = space, objective, options
    self.stop = stop
    self.study = open_study(workdir, options, space, objective, create=True)
    self._lock = _claims_lock(workdir)
    self._id = f'{socket.gethostname()}:{os.getpid()}'
    self.messages = []

  def lease(self, trial_id: int, seconds: float):
    """Claims the trial for `seconds` from now (negative: frees it)."""
    _storage_of(self.study).set_trial_user_attr(
        trial_id, 'lease', {'worker': self._id, 'until': time.time() + seconds})

  def claim(self) -> Optional[Claim]:
    """The next trial to run (an orphan first); WAIT while the trials left
    run on other workers; None when the study has all its trials finished
    (or this array slot's trial is)."""
    optuna = _optuna()
    running = optuna.trial.TrialState.RUNNING
    self._lock.acquire()
    try:
      trials = self.study.get_trials(deepcopy=False)
      slot = self.options.array_index
      for t in trials:
        if t.state != running:
          continue
        folder = os.path.join(self.workdir, t.user_attrs.get('name', ''))
        if os.path.isfile(os.path.join(folder, workdir_files.PRUNED)):
          # Its worker died between the pruner's verdict and the record.
          self.study.tell(t.number, state=optuna.trial.TrialState.PRUNED,
                          skip_if_finished=True)
          continue
        mine = slot >= 0 and t.user_attrs.get('slot') == slot
        expired = t.user_attrs.get('lease', {}).get('until', 0) < time.time()
        if mine or (slot < 0 and expired):
          self.lease(_trial_id(t), self.options.lease_seconds)
          return Claim(_trial_id(t), t.number, t.user_attrs['name'],
                       dict(t.params), resumed=True)
      if slot >= 0:
        done = [t for t in trials if t.user_attrs.get('slot') == slot]
        if done:
          self.messages.append(f'array index {slot}: its trial '
                               f'{done[0].user_attrs["name"]} is '
                               f'{done[0].state.name.lower()}; nothing to run')
          return None
        if slot >= self.options.n_trials:
          self.messages.append(
              f'array index {slot} is past the last trial (--n_trials='
              f'{self.options.n_trials}: indices 0 to '
              f'{self.options.n_trials - 1}); nothing to run')
          return None
      elif len(trials) >= self.options.n_trials:
        # Trials running elsewhere may still lose their worker: wait and
        # look again, to resume them if so.
        return WAIT if any(t.state == running for t in trials) else None
      # Trials are only asked for under this lock, so the next number is
      # known: the sampler's seed follows it, and two workers never draw
      # from the same random stream.
      self.study.sampler = _sampler(self.options.search,
                                    self.options.seed * 100003 + len(trials))
      trial = self.study.ask(fixed_distributions=self.space)
      name = trial_name(trial.number)
      trial.set_user_attr('name', name)
      if slot >= 0:
        trial.set_user_attr('slot', slot)
      self.lease(_trial_id(trial), self.options.lease_seconds)
      return Claim(_trial_id(trial), trial.number, name, dict(trial.params),
                   resumed=False)
    finally:
      self._lock.release()

  def run(self, claim: Claim, device=None, progress=None) -> Optional[str]:
    """Runs `claim` to its end; records it in the study. Returns the
    trial's status ('done', 'pruned', 'failed', 'interrupted') or None if
    the sweep was stopped before it started."""
    optuna = _optuna()
    states = optuna.trial.TrialState
    folder = os.path.join(self.workdir, claim.name)
    watcher = _Watcher(self, claim, folder)
    on_start = None
    if progress is not None:
      on_start = functools.partial(progress.start, claim.name)
    status = sweep_runner.run_trial(folder, self.config_file, self.fixed,
                                    claim.params, device, self.stop,
                                    on_start=on_start, watch=watcher.watch)
    if watcher.pruned:
      status = 'pruned'
      self.study.tell(claim.number, state=states.PRUNED,
                      skip_if_finished=True)
    elif status == 'done':
      summary = workdir_files.read_json(folder, workdir_files.SUMMARY)
      value = summary.get(f'best_{summary.get("best_chosen_on")}_accuracy')
      self.study.tell(claim.number, value, skip_if_finished=True)
    elif status == 'failed':
      self.study.tell(claim.number, state=states.FAIL, skip_if_finished=True)
    else:  # Stopped: free at once for the next worker (a rerun here).
      self.lease(claim.trial_id, -1)
    if status and progress is not None:
      progress.end(claim.name, status, folder)
    return status

  def loop(self, device=None, progress=None):
    """Claims and runs trials until the study has none left for it."""
    while not self.stop.is_set():
      claim = self.claim()
      if claim is None:
        return
      if claim is WAIT:
        self.stop.wait(min(self.options.lease_seconds / 3,
                           WAIT_POLLS * POLL_SECONDS))
        continue
      if claim.resumed:
        print(f'[sweep] {claim.name}: resuming (its worker stopped)',
              flush=True)
      self.run(claim, device, progress)
      if self.options.array_index >= 0:
        return


class _Watcher:
  """While a trial's process runs: renews its lease and reports its epochs
  to the pruner, stopping the process if the pruner says so."""

  def __init__(self, worker: Worker, claim: Claim, folder: str):
    self.worker, self.claim, self.folder = worker, claim, folder
    self.pruned = False

  def watch(self, proc: subprocess.Popen):
    optuna = _optuna()
    trial = optuna.trial.Trial(self.worker.study, self.claim.trial_id)
    reported = set(_storage_of(self.worker.study).get_trial(
        self.claim.trial_id).intermediate_values)
    renew_every = self.worker.options.lease_seconds / 3
    renewed, seen = time.monotonic(), None
    history_path = os.path.join(self.folder, workdir_files.HISTORY)
    while proc.poll() is None:
      time.sleep(POLL_SECONDS)
      if time.monotonic() - renewed >= renew_every:
        self.worker.lease(self.claim.trial_id,
                          self.worker.options.lease_seconds)
        renewed = time.monotonic()
      if self.pruned:
        continue
      try:
        stamp = os.stat(history_path).st_mtime_ns
      except OSError:
        continue
      if stamp == seen:
        continue
      seen = stamp
      history = workdir_files.read_json(self.folder, workdir_files.HISTORY)
      for epoch, value in epoch_values(history or []):
        if epoch not in reported:
          trial.report(value, epoch)
          reported.add(epoch)
      if reported and trial.should_prune():
        last = max(reported)
        workdir_files.write_json(
            os.path.join(self.folder, workdir_files.PRUNED),
            {'epoch': last, 'value': dict(epoch_values(history))[last],
             'pruner': self.worker.options.pruner})
        self.pruned = True
        # The trainer's preemption path: it checkpoints and exits 75.
        proc.send_signal(signal.SIGTERM)


def epoch_values(history: list) -> list[tuple[int, float]]:
  """(epoch, selection accuracy) of each whole epoch of a history."""
  values = []
  for entry in history:
    epoch = entry.get('epoch', 0)
    if epoch < 1 or abs(epoch - round(epoch)) > 1e-6:
      continue
    split = 'validation' if 'validation_accuracy' in entry else 'test'
    values.append((int(round(epoch)), float(entry[f'{split}_accuracy'])))
  return values


def rows_of(workdir: str, study) -> list[dict]:
  """Every trial's row of the result table, in trial order."""
  optuna = _optuna()
  rows = []
  for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
    name = t.user_attrs.get('name', trial_name(t.number))
    # Sampled floats stay numbers: the table shows 4 digits, the CSV all.
    row = sweep_report.collect(
        os.path.join(workdir, name), name,
        {k: v if isinstance(v, float) else sweep_runner.format_value(v)
         for k, v in t.params.items()})
    if t.state == optuna.trial.TrialState.PRUNED:
      row['status'] = 'pruned'
    rows.append(row)
  return rows


def best_trial(study) -> Optional[Any]:
  complete = [t for t in study.get_trials(deepcopy=False)
              if t.state.name == 'COMPLETE' and t.value is not None]
  return max(complete, key=lambda t: (t.value, -t.number), default=None)


def preamble(study, options: Options, objective: str) -> list[str]:
  """The lines above the table in sweep.md: sampler, pruner, counts, the
  best trial and its overrides."""
  trials = study.get_trials(deepcopy=False)
  counts = {}
  for t in trials:
    counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
  lines = [f'Search: {options.search} sampler, pruner {options.pruner}, '
           f'{len(trials)} of {options.n_trials} trials (' + ', '.join(
               f'{n} {k}' for k, n in sorted(counts.items())) +
           f'); objective: {objective} (maximized).']
  best = best_trial(study)
  if best is not None:
    overrides = ' '.join(f'--config.{k}={sweep_runner.format_value(v)}'
                         for k, v in best.params.items())
    lines.append(f'Best: {best.user_attrs.get("name")}, {objective} '
                 f'{best.value:.4f}: `{overrides}`.')
  return lines + ['']


def write_best_config(path: str, workdir: str, study, objective: str):
  """Writes the best trial's whole config (its config.json) as a config
  file main.py trains with."""
  best = best_trial(study)
  if best is None:
    raise SweepError(f'--best_config={path}: no trial has finished yet')
  name = best.user_attrs.get('name')
  config = workdir_files.read_json(os.path.join(workdir, name),
                                   workdir_files.CONFIG)
  text = (f'"""The best trial of the sweep in {workdir}: {name}, '
          f'{objective} {best.value:.4f}.\n\nWritten by sweep.py '
          f'--best_config; its overrides: '
          + ', '.join(f'{k}={sweep_runner.format_value(v)}'
                      for k, v in best.params.items()) + '.\n"""\n\n'
          'import ml_collections\n\n'
          f'CONFIG = {pprint.pformat(config, indent=1, sort_dicts=False)}'
          '\n\n\ndef get_config():\n'
          '  return ml_collections.ConfigDict(CONFIG)\n')
  with workdir_files.replaced(path) as f:  # Workers may write it at once.
    f.write(text)


def search_and_report(workdir, config, config_file, fixed, space_specs,
                      options: Options, best_config: str = '',
                      verbose: bool = False) -> int:
  """The search command: checks, runs this worker's trials, reports.

  Returns:
    0 when the study has all its trials finished (done or pruned), 1 when
    some failed, EXIT_PREEMPTED when some are unfinished, 2 for a bad spec
    (then nothing was created or started).
  """
  workdir = os.path.abspath(workdir)
  try:
    check_options(options)
    sweep_runner.check_options(workdir, options.parallel,
                               options.visible_devices)
    space = parse_space(config, space_specs, fixed)
    objective = objective_of(config)
    if best_config and not os.path.isdir(os.path.dirname(
        os.path.abspath(best_config))):
      raise SweepError(f'--best_config={best_config}: accepted: a file in '
                       f'an existing folder')
    open_study(workdir, options, space, objective, create=False)
    sweep_runner.check_trial_configs(config, extremes(space))
  except SweepError as e:
    sweep_runner.report_error(e, verbose)
    return cli.EXIT_BAD_INPUT
  os.makedirs(workdir, exist_ok=True)
  stop = threading.Event()
  worker = Worker(workdir, config, config_file, fixed, space, objective,
                  options, stop)
  print(f'[sweep] {options.search} search, {options.n_trials} trials in '
        f'{sweep_report.show_path(workdir)} (this worker: '
        f'{options.parallel} at a time)', flush=True)
  handler = functools.partial(sweep_runner.handle_signal, stop)
  previous = {s: signal.signal(s, handler)
              for s in (signal.SIGTERM, signal.SIGINT)}
  progress = sweep_report.Progress(options.n_trials, options.parallel)
  try:
    slots = [(options.visible_devices[i % len(options.visible_devices)]
              if options.visible_devices else None)
             for i in range(options.parallel if options.array_index < 0
                            else 1)]
    with futures.ThreadPoolExecutor(max_workers=len(slots)) as pool:
      list(pool.map(lambda d: worker.loop(d, progress), slots))
  finally:
    for signum, old in previous.items():
      signal.signal(signum, old)
  for message in worker.messages:
    print(f'[sweep] {message}', flush=True)
  rows = rows_of(workdir, worker.study)
  print(sweep_report.write_reports(
      workdir, rows, preamble(worker.study, options, objective)), flush=True)
  if best_config:
    try:
      write_best_config(best_config, workdir, worker.study, objective)
      print(f'[sweep] best trial\'s config: {best_config}', flush=True)
    except SweepError as e:
      sweep_runner.report_error(e, verbose)
  if options.array_index >= 0:
    return 0 if not stop.is_set() else cli.EXIT_PREEMPTED
  if any(r['status'] == 'failed' for r in rows):
    return cli.EXIT_FAILED
  finished = [r for r in rows if r['status'] in ('done', 'pruned')]
  if stop.is_set() or len(finished) < options.n_trials:
    print('[sweep] unfinished trials: run the same command again to '
          'continue', file=sys.stderr)
    return cli.EXIT_PREEMPTED
  return 0
