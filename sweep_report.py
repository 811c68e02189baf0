"""The results of a sweep: each trial's status and row, the result table
(sweep.csv, sweep.md, sweep.png) and the progress lines printed as trials
start and end.

sweep_runner runs the trials and hands their folders here. This module knows
a trial by its name and its override values as text, so it needs nothing of
sweep_runner (which imports it). Like the rest of the sweep command, it never
imports JAX.
"""

import csv
import logging
import os
import sys
import textwrap
import threading
import time
from typing import Optional, Sequence

import workdir_files

# Columns of the result table: the metrics of a trial's last epoch, then
# what its summary.json says of its best checkpoint.
METRIC_PREFIXES = ('train_', 'validation_', 'test_')
BEST_KEYS = ('best_chosen_on', 'best_validation_accuracy',
             'best_test_accuracy', 'best_epoch')
TAIL_COLUMNS = [*BEST_KEYS, 'wall_seconds', 'error']


def trial_status(workdir: str) -> str:
  """'done', 'pruned' (a search's pruner stopped it), 'failed',
  'interrupted' (resumable) or 'pending', from the files in the trial's
  `workdir`."""
  if workdir_files.finished(workdir):  # Not preempted or diverged.
    return 'done'
  if os.path.isfile(os.path.join(workdir, workdir_files.PRUNED)):
    return 'pruned'
  if os.path.isfile(os.path.join(workdir, workdir_files.FAILED)):
    return 'failed'
  if os.path.isdir(os.path.join(workdir, workdir_files.CHECKPOINTS)):
    return 'interrupted'
  return 'pending'


def collect(workdir: str, name: str, values: dict) -> dict:
  """One row of the result table.

  Args:
    workdir: the trial's own folder.
    name: the trial's name (its folder's).
    values: {key: value as text} of the trial's overrides.

  Returns:
    {'trial': name, **values, 'status': ...}, then what the trial's files
    say: its last epoch's metrics, best checkpoint and time, or its error.
  """
  row = {'trial': name, **values, 'status': trial_status(workdir)}
  if row['status'] == 'done':
    summary = workdir_files.read_json(workdir, workdir_files.SUMMARY)
    # Every metric of the run's last epoch, whatever the trainer records.
    row.update({k: v for k, v in summary['history'][-1].items()
                if k.startswith(METRIC_PREFIXES)})
    # The best checkpoint as the run's checkpoint manager ranked it: on
    # validation accuracy when the run holds out a validation split, so the
    # test set picks nothing.
    row.update({k: summary[k] for k in BEST_KEYS if k in summary})
    row['wall_seconds'] = summary['wall_seconds']
    row['history'] = summary['history']
  elif row['status'] == 'failed':
    row['error'] = workdir_files.read_json(workdir, workdir_files.FAILED)[
        'error']
  else:  # Pruned or unfinished: its last epoch so far.
    history = workdir_files.read_json(workdir, workdir_files.HISTORY) or []
    if history:
      row.update({k: v for k, v in history[-1].items()
                  if k.startswith(METRIC_PREFIXES)})
      row['history'] = history
  return row


def _sort_key(row):
  order = {'done': 0, 'pruned': 1, 'interrupted': 2, 'pending': 3,
           'failed': 4}
  return (order[row['status']], -row.get('best_validation_accuracy', 0.0),
          -row.get('best_test_accuracy', 0.0))


def format_cell(key: str, value) -> str:
  """A table cell: counts (epochs, steps) as integers (a partial last epoch
  with 2 decimals, or 1 digit below 0.01), accuracies and losses with 4
  decimals, seconds with 1."""
  if value is None:
    return ''
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if key.endswith(('epoch', 'epochs', 'step', 'steps')):
    if float(value).is_integer():
      return str(int(value))
    return f'{value:.2f}' if abs(value) >= 0.01 else f'{value:.1g}'
  if isinstance(value, int):
    return str(value)
  if key.endswith('seconds'):
    return f'{value:.1f}'
  return f'{value:.4f}' if key.endswith(('accuracy', 'loss')) else (
      f'{value:.4g}')


def ranking_warning(rows: Sequence[dict]) -> Optional[str]:
  """One line if any trial's best checkpoint, and so the ranking, was chosen
  on the test set (no validation split); None otherwise."""
  chosen = [r['best_chosen_on'] for r in rows if 'best_chosen_on' in r]
  if 'test' not in chosen:
    return None
  on_test = chosen.count('test')
  which = ('no trial has a validation split, so each best checkpoint'
           if on_test == len(chosen) else
           f'{on_test} of the {len(chosen)} finished trials have no '
           f'validation split, so their best checkpoints')
  return (f'warning: {which} and this ranking are chosen on the test set '
          f'(its accuracy is then optimistic); sweep with '
          f'--config.validation_fraction=0.1 (in another --workdir) to choose '
          f'on held-out training data')


def write_reports(workdir: str, rows: list[dict],
                  preamble: Sequence[str] = ()) -> str:
  """Writes sweep.csv (full precision), sweep.md and sweep.png; returns the
  markdown: `preamble` (a search's sampler and best trial), the table and,
  if the test set chose the ranking, a warning."""
  rows = sorted(rows, key=_sort_key)
  swept, metrics = [], []
  for row in rows:
    for key in row:
      if key in ['trial', 'status', 'history'] + TAIL_COLUMNS:
        continue
      group = metrics if key.startswith(METRIC_PREFIXES) else swept
      if key not in group:
        group.append(key)
  validated = any('best_validation_accuracy' in r for r in rows)
  tail = [c for c in TAIL_COLUMNS if validated or c not in (
      'best_chosen_on', 'best_validation_accuracy')]
  header = ['trial'] + swept + ['status'] + metrics + tail
  # Written aside and moved in: workers and array tasks of one sweep may
  # write at once, and a reader never sees half a table.
  path = os.path.join(workdir, workdir_files.SWEEP_CSV)
  with workdir_files.replaced(path, newline='') as f:
    writer = csv.DictWriter(f, fieldnames=header, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  lines = list(preamble) + ['| ' + ' | '.join(header) + ' |',
                            '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(format_cell(k, r.get(k)) for k in header) +
            ' |' for r in rows]
  warning = ranking_warning(rows)
  if warning:
    lines += ['', warning]
  table = '\n'.join(lines) + '\n'
  path = os.path.join(workdir, workdir_files.SWEEP_TABLE)
  with workdir_files.replaced(path) as f:
    f.write(table)
  # At --verbosity=1 absl would pass on matplotlib's hundreds of DEBUG lines.
  logging.getLogger('matplotlib').setLevel(logging.INFO)
  import plots  # pylint: disable=g-import-not-at-top
  plots.plot_sweep({r['trial']: r['history'] for r in rows if 'history' in r},
                   os.path.join(workdir, workdir_files.SWEEP_PLOT))
  return table


def format_duration(seconds: float) -> str:
  """'42 s', '3 min 05 s', '2 h 07 min'."""
  seconds = max(0, round(seconds))
  if seconds < 60:
    return f'{seconds} s'
  if seconds < 3600:
    return f'{seconds // 60} min {seconds % 60:02d} s'
  return f'{seconds // 3600} h {seconds % 3600 // 60:02d} min'


def show_path(path: str) -> str:
  """`path` relative to the current folder if inside it (shorter to read and
  to paste), else absolute."""
  relative = os.path.relpath(path)
  return path if relative.startswith('..') else relative


class Progress:
  """The sweep's progress lines: each trial's start (with its log), its end
  (status, time, best accuracy) and the time the rest should take.

  The estimate is the mean time of the trials done in this invocation times
  those left, over `parallel`; trials that failed or stopped early are left
  out of the mean.
  """

  def __init__(self, total: int, parallel: int, clock=time.monotonic):
    self._total, self._parallel, self._clock = total, parallel, clock
    self._lock = threading.Lock()
    self._numbers, self._starts, self._done_seconds = {}, {}, []
    self._ended = 0

  def _print(self, line: str):
    with self._lock:  # One write: lines of parallel trials stay whole.
      sys.stdout.write(line + '\n')
      sys.stdout.flush()

  def start(self, name: str, log_path: str):
    """Prints the start of the trial `name`, its output going to
    `log_path`."""
    with self._lock:
      self._numbers[name] = len(self._numbers) + 1
      self._starts[name] = self._clock()
    # The log's path names the trial (its folder).
    self._print(f'[sweep] {self._numbers[name]}/{self._total} started, log: '
                f'{show_path(log_path)}')

  def end(self, name: str, status: str, workdir: str):
    """Prints the end of the trial `name`, run in `workdir`, with
    `status`."""
    with self._lock:
      seconds = self._clock() - self._starts[name]
      self._ended += 1
      if status == 'done':
        self._done_seconds.append(seconds)
      left = self._total - self._ended
      mean = (sum(self._done_seconds) / len(self._done_seconds)
              if self._done_seconds else None)
    line = (f'[sweep] {self._numbers[name]}/{self._total} {name}: {status} '
            f'in {format_duration(seconds)}')
    if status == 'done':
      summary = workdir_files.read_json(workdir, workdir_files.SUMMARY) or {}
      split = summary.get('best_chosen_on')
      best = summary.get(f'best_{split}_accuracy')
      if isinstance(best, (int, float)):
        line += f', best {split} accuracy {best:.4f}'
    elif status == 'failed':
      error = (workdir_files.read_json(workdir, workdir_files.FAILED) or
               {}).get('error', '')
      line += f': {textwrap.shorten(error, 100, placeholder=" ...")}'
    if left and mean is not None and status != 'interrupted':
      line += (f'; {left} left, about '
               f'{format_duration(mean * left / self._parallel)}')
    self._print(line)
