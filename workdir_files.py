"""A workdir's files: their names, the trainer's lock, and reading them back.

Every file a run or a sweep leaves is named here once; the trainer, eval,
predict, sweeps and `configs/workdir.py` take the names and the readers from
this module.

One trainer per workdir: the lock is `fcntl.flock` on `<workdir>/.lock`. The
kernel releases it when the holder's process ends, however it ends (kill -9
included), so a stale lock cannot block a resume. The file holds the
holder's pid and host, for the message a second trainer prints. Eval and
predict only read and take no lock.
"""

import contextlib
import fcntl
import json
import os
import socket
import threading
from typing import Any, Optional

import ml_collections

# A training run's workdir.
SUMMARY = 'summary.json'
CONFIG = 'config.json'
DATASET = 'dataset.json'
CHECKPOINTS = 'checkpoints'
UNREADABLE_CHECKPOINTS = 'checkpoints_unreadable'
LOCK = '.lock'
METRICS_PLOT = 'metrics.png'
PREDICTIONS_PLOT = 'predictions.png'
EVAL = 'eval.json'
# The epochs so far ({epoch, step, metrics} each), rewritten at each epoch's
# end: what a sweep reads to prune a trial while it runs.
HISTORY = 'history.json'
CONFUSION_PLOT = 'confusion.png'
# Experiment trackers (trackers.py): their run ids and the last step each
# logged per metric; MLflow's default store; W&B's own folder.
TRACKERS = 'trackers.json'
MLFLOW_DB = 'mlflow.db'
WANDB_DIR = 'wandb'
# What a sweep adds to each trial's workdir...
TRAIN_LOG = 'train.log'
FAILED = 'failed.json'
PRUNED = 'pruned.json'  # A searched trial its pruner stopped: never resumed.
# ...and to its own.
SWEEP_CSV = 'sweep.csv'
SWEEP_TABLE = 'sweep.md'
SWEEP_PLOT = 'sweep.png'


class WorkdirError(ValueError):
  """A workdir that cannot be used as asked; the message says why."""


class WorkdirBusy(RuntimeError):
  """Another trainer holds the workdir; the message names it."""


def checkpoint_dir(workdir: str) -> str:
  """The absolute path of the run's checkpoints folder (Orbax wants one)."""
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def check_writable(workdir: str):
  """Fails early, before any work, if `workdir` cannot be written; creates
  it if missing."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'workdir {workdir!r} is a file; give a folder (it is '
                       f'created if missing)')
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f'workdir {workdir!r} cannot be written: '
                       f'{e.strerror or e}; give a writable folder') from e


@contextlib.contextmanager
def hold_lock(workdir: str):
  """Holds the workdir's lock for the body; raises WorkdirBusy at once if
  another process holds it."""
  path = os.path.join(workdir, LOCK)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors='replace').strip()
      raise WorkdirBusy(
          f'workdir {workdir} is in use by another trainer '
          f'({holder or "pid unknown"}); wait for it to end, stop it, or use '
          f'another --workdir') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()}\n'.encode(),
              0)
    yield
  finally:
    os.close(fd)  # Closing releases the lock.


# summary.json's stop_reason of a run that stopped before its end; its
# summary is then what it had so far, and a rerun continues it.
UNFINISHED_STOPS = ('preempted', 'diverged')


def finished(workdir: str) -> bool:
  """Whether the run in `workdir` has ended: its summary.json says it
  finished or stopped early (not that it was preempted or diverged)."""
  try:
    summary = read_json(workdir, SUMMARY)
  except WorkdirError:
    return False
  return summary is not None and summary.get(
      'stop_reason') not in UNFINISHED_STOPS


@contextlib.contextmanager
def replaced(path: str, mode: str = 'w', **kwargs):
  """Opens a file beside `path`, this process's and thread's own, and moves
  it onto `path` when the body ends (removes it if the body fails): the file
  under its name is whole or the last whole one, after a crash too, however
  many workers write it at once."""
  temporary = f'{path}.{os.getpid()}.{threading.get_ident()}.tmp'
  try:
    with open(temporary, mode, **kwargs) as f:
      yield f
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def write_json(path: str, obj: Any):
  """Writes JSON atomically: readers never see a half-written file."""
  with replaced(path) as f:
    json.dump(obj, f, indent=2)


def read_json(workdir: str, name: str, missing: Optional[str] = None):
  """The JSON file `name` of `workdir`.

  Args:
    workdir: the folder.
    name: one of this module's file names.
    missing: if given, a missing file raises WorkdirError with this reason;
      otherwise it reads as None.

  Raises:
    WorkdirError: the file is missing (with `missing`) or is not JSON.
  """
  path = os.path.join(workdir, name)
  if not os.path.isfile(path):
    if missing is None:
      return None
    raise WorkdirError(f'{workdir} has no {name}: {missing}')
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f'{path} cannot be read ({type(e).__name__}: '
                       f'{str(e).splitlines()[0][:120]}); it is damaged. '
                       f'Restore it, or train into another --workdir') from e


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run in `workdir` saved, over configs/default.py
  (older runs saved fewer keys; the defaults fill in the rest)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  saved = read_json(workdir, CONFIG, missing='not a training workdir (train '
                    'first, or give --config)')
  if not isinstance(saved, dict):
    raise WorkdirError(f'{os.path.join(workdir, CONFIG)} holds '
                       f'{type(saved).__name__}, not a config; it is damaged')
  config = default.get_config()
  config.update(saved)
  return config


def load_dataset_info(workdir: str) -> dict:
  """What the run recorded of its data: image shape, classes and names."""
  return read_json(workdir, DATASET,
                   missing='train with this version first')
