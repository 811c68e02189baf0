"""Experiment trackers beside TensorBoard: MLflow and Weights & Biases.

`open_trackers` starts (or, on resume, reopens) one tracker run per
training workdir; the SummaryWriter hands it every scalar it writes, and
`Trackers.finish` adds the summary's figures and closes the runs.
docs/trackers.md says where the runs go.

`W/trackers.json` keeps each tracker's run id, so that a resumed session
continues the same runs. That session replays the steps between its
checkpoint and the point where the killed one stopped; a tracker cannot drop
points, as event_files.truncate_after does for TensorBoard, so each tracker
is asked at start for the last step it holds of each metric, and points at
or before it are skipped (the replayed values are the same: the trainer is
deterministic). A tracker that fails is dropped with one warning line: it
never stops training.
"""

import contextlib
import fcntl
import glob
import hashlib
import importlib.util
import os
import struct
import time
from typing import Optional

from absl import logging
from clu.internal import utils as clu_utils

import preemption
import workdir_files

# Set by the sweep runner in each trial's environment.
SWEEP_NAME_ENV = 'TRAINER_SWEEP_NAME'
TRIAL_NAME_ENV = 'TRAINER_TRIAL_NAME'
INSTALL = 'pip install -r requirements-extras.txt'
DEFAULT_PROJECT = 'trainer'
# MLflow's own retries (7, doubling waits) would stall training for minutes
# when a server goes away; these defaults give up within seconds.
_MLFLOW_HTTP_DEFAULTS = {'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '2',
                         'MLFLOW_HTTP_REQUEST_TIMEOUT': '10'}
# MLflow's limits (mlflow.utils.validation) and per-call batch sizes.
_MLFLOW_VALUE_LENGTH = 6000
_MLFLOW_BATCH = 100
_WANDB_BLOCK = 32768
# summary.json's timings, named like the last epoch's metrics.
_TIMINGS = ('train_seconds', 'train_images_per_second')


class TrackerError(ValueError):
  """A trackers value that cannot be used; the message names it."""


def parse_trackers(value: str, check_installed: bool = True) -> list[str]:
  """The tracker names of config.trackers ('mlflow,wandb').

  Raises:
    TrackerError: an unknown name, or (with `check_installed`) one whose
      package is not installed.
  """
  names = [n.strip() for n in value.split(',') if n.strip()]
  for name in names:
    if name not in TRACKERS:
      raise TrackerError(f'unknown tracker {name!r} in trackers {value!r}; '
                         f'accepted: {", ".join(TRACKERS)}, comma-separated '
                         f'(empty: TensorBoard only)')
    if check_installed and importlib.util.find_spec(name) is None:
      raise TrackerError(f'trackers {name!r} needs the {name} package, which '
                         f'is not installed: {INSTALL}')
  return list(dict.fromkeys(names))


def default_project(workdir: str) -> str:
  """The workdir's parent folder's name (a sweep's folder for its trials),
  or 'trainer'."""
  parent = os.path.basename(os.path.dirname(os.path.abspath(workdir)))
  return parent or DEFAULT_PROJECT


def run_name(workdir: str) -> str:
  return os.environ.get(TRIAL_NAME_ENV) or os.path.basename(
      os.path.abspath(workdir))


def wandb_run_id(workdir: str) -> str:
  """The W&B run id of a workdir: the same in every session."""
  return hashlib.sha256(os.path.abspath(workdir).encode()).hexdigest()[:16]


def flat_config(config: dict) -> dict:
  """{'model_kwargs.dtype': 'float32', ...}, as TensorBoard's hparams."""
  return dict(clu_utils.flatten_dict(config))


def summary_figures(summary: dict) -> dict:
  """The numbers of summary.json as tracker metrics.

  The last epoch's (test_accuracy, ...) are named final_*: at the final
  step the plain names already hold the logged points, and train_loss there
  is a window's mean, in summary.json the epoch's. best_*, final_step and
  the timings keep their names.
  """
  figures = {}
  for key, value in summary.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    last_epoch = key == 'epoch' or (
        key.startswith(('train_', 'validation_', 'test_')) and
        key not in _TIMINGS)
    figures[f'final_{key}' if last_epoch else key] = float(value)
  return figures


def _one_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0][:300] if text else ""}'


@contextlib.contextmanager
def _first_use_lock(uri: str):
  """Holds a lock file beside a SQLite store while a run opens it.

  MLflow creates a new SQLite store's tables on first use; two trials of a
  sweep starting at once both try, and one fails (alembic: "table
  _alembic_tmp_experiments already exists"). Other stores need no lock.
  """
  if not uri.startswith('sqlite:///'):
    yield
    return
  with open(uri[len('sqlite:///'):] + '.lock', 'a') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


class _MLflow:
  """One MLflow run per workdir, reopened by the id trackers.json keeps."""

  name = 'mlflow'

  def __init__(self, workdir, project, params, tags, state):
    from mlflow import exceptions  # pylint: disable=g-import-not-at-top
    from mlflow import tracking  # pylint: disable=g-import-not-at-top
    from mlflow import entities  # pylint: disable=g-import-not-at-top
    self._entities = entities
    uri = os.environ.get('MLFLOW_TRACKING_URI') or 'sqlite:///' + (
        os.path.abspath(os.path.join(workdir, workdir_files.MLFLOW_DB)))
    if uri.startswith(('http:', 'https:')):
      for key, value in _MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    with _first_use_lock(uri):
      self._client = client = tracking.MlflowClient(uri)
      run = None
      if state.get('run_id'):
        try:
          run = client.get_run(state['run_id'])
        except exceptions.MlflowException:
          logging.warning('MLflow run %s (trackers.json) is not in %s; '
                          'starting a new run there', state['run_id'], uri)
      if run is None:
        run = client.create_run(self._experiment_id(project),
                                run_name=run_name(workdir))
        state.update(tracking_uri=uri, run_id=run.info.run_id)
      else:
        client.update_run(run.info.run_id, status='RUNNING')
      self._run_id = run.info.run_id
      params = {k: self._clip(v) for k, v in params.items()}
      had = run.data.params
      # A resume may change some keys (config_rules.RESUME_CHANGES); MLflow
      # refuses to change a param, so the new values go in as tags.
      tags = dict(tags, **{f'changed.{k}': v for k, v in params.items()
                           if k in had and had[k] != v})
      self._log_batch(params=[entities.Param(k, v) for k, v in params.items()
                              if k not in had],
                      tags=[entities.RunTag(k, self._clip(v))
                            for k, v in tags.items()])
      # The last step of each metric the run holds: replayed steps are skipped.
      self.logged = {
          key: max(m.step for m in client.get_metric_history(self._run_id, key))
          for key in run.data.metrics}

  def _experiment_id(self, project):
    experiment = self._client.get_experiment_by_name(project)
    if experiment is not None:
      return experiment.experiment_id
    try:
      return self._client.create_experiment(project)
    except Exception:  # pylint: disable=broad-except
      # Another trial of a sweep created it first.
      experiment = self._client.get_experiment_by_name(project)
      if experiment is None:
        raise
      return experiment.experiment_id

  @staticmethod
  def _clip(value) -> str:
    text = str(value)
    if len(text) <= _MLFLOW_VALUE_LENGTH:
      return text
    return text[:_MLFLOW_VALUE_LENGTH - 3] + '...'

  def _log_batch(self, metrics=(), params=(), tags=()):
    metrics, params, tags = list(metrics), list(params), list(tags)
    while metrics or params or tags:
      self._client.log_batch(self._run_id, metrics=metrics[:_MLFLOW_BATCH],
                             params=params[:_MLFLOW_BATCH],
                             tags=tags[:_MLFLOW_BATCH])
      metrics, params, tags = (metrics[_MLFLOW_BATCH:],
                               params[_MLFLOW_BATCH:], tags[_MLFLOW_BATCH:])

  def log(self, step: int, scalars: dict):
    now = int(time.time() * 1000)
    self._log_batch(metrics=[self._entities.Metric(k, v, now, step)
                             for k, v in scalars.items()])

  def finish(self, status: str):
    self._client.set_terminated(self._run_id, status)


class _Wandb:
  """One W&B run per workdir (its id from the path), offline unless logged
  in; the runs land in W/wandb/."""

  name = 'wandb'

  def __init__(self, workdir, project, params, tags, state):
    import wandb  # pylint: disable=g-import-not-at-top
    del tags  # W&B runs are grouped by sweep and named by trial instead.
    mode = os.environ.get('WANDB_MODE') or (
        'online' if _wandb_logged_in(wandb) else 'offline')
    state.setdefault('run_id', wandb_run_id(workdir))
    state.update(project=project, mode=mode)
    self.logged = wandb_logged_steps(workdir, state['run_id'])
    self._run = wandb.init(
        project=project, id=state['run_id'], resume='allow', dir=workdir,
        mode=mode, name=run_name(workdir),
        group=os.environ.get(SWEEP_NAME_ENV) or None,
        # Without its history and summary tables at the end (30 lines).
        settings=wandb.Settings(quiet=True))
    self._run.config.update(params, allow_val_change=True)

  def log(self, step: int, scalars: dict):
    self._run.log(scalars, step=step)

  def summarize(self, figures: dict):
    self._run.summary.update(figures)

  def finish(self, status: str):
    self._run.finish(exit_code=0 if status == 'FINISHED' else 1)


def wandb_logged_steps(workdir: str, run_id: str) -> dict:
  """{metric: its last step} in the local logs of every session of a W&B
  run (what W&B has on disk; a session killed hard lost its last partial
  block, and those points are logged again)."""
  logged = {}
  for path in glob.glob(os.path.join(workdir, workdir_files.WANDB_DIR,
                                     f'*-{run_id}', f'run-{run_id}.wandb')):
    try:
      records = read_wandb_records(path)
    except Exception as e:  # pylint: disable=broad-except
      # W&B's format, not ours: an unreadable log only costs duplicates.
      logging.warning('Cannot read %s (%s); its points are logged again',
                      path, _one_line(e))
      continue
    for record in records:
      if record.WhichOneof('record_type') == 'history':
        step = record.history.step.num
        for item in record.history.item:
          key = item.key or '.'.join(item.nested_key)
          logged[key] = max(step, logged.get(key, -1))
  return logged


def read_wandb_records(path: str) -> list:
  """The records (wandb_internal_pb2.Record) of a run-ID.wandb file, the
  log `wandb sync` uploads: LevelDB's log format, with a 7-byte header
  (':W&B', magic, version) and 32 KiB blocks of records (checksum, length,
  type: full, first, middle, last part). A record cut by a kill is left
  out."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    data = f.read()
  if data[:4] != b':W&B':
    raise ValueError(f'{path} is not a W&B run log')
  pos, parts, records = 7, [], []
  while pos + 7 <= len(data):
    left = _WANDB_BLOCK - pos % _WANDB_BLOCK
    if left < 7:  # Too short for a record header: padding.
      pos += left
      continue
    _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
    chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
    if kind == 0 or pos > len(data):  # Zeros after the end, or cut.
      break
    parts = [chunk] if kind in (1, 2) else parts + [chunk]
    if kind in (1, 4):
      records.append(wandb_internal_pb2.Record.FromString(b''.join(parts)))
  return records


def _wandb_logged_in(wandb) -> bool:
  """WANDB_API_KEY or a stored key (netrc) for W&B's host; never asks."""
  if os.environ.get('WANDB_API_KEY'):
    return True
  try:
    # What wandb.api.api_key reads, without its deprecation line.
    from wandb.sdk import wandb_setup  # pylint: disable=g-import-not-at-top
    from wandb.sdk.lib import wbauth  # pylint: disable=g-import-not-at-top
    settings = wandb_setup.singleton().settings
    return bool(wbauth.read_netrc_auth(host=settings.base_url) or
                settings.api_key)
  except (ImportError, AttributeError):  # Another wandb version.
    return bool(wandb.api.api_key)


# One table per choice: name -> the class that opens its run.
TRACKERS = {'mlflow': _MLflow, 'wandb': _Wandb}


class Trackers:
  """The open trackers of a run (none on processes other than 0)."""

  def __init__(self, opened=()):
    self._open = list(opened)

  @property
  def names(self) -> list[str]:
    return [tracker.name for tracker in self._open]

  def write_scalars(self, step: int, scalars):
    """Logs the points after each tracker's last logged step."""
    for tracker in list(self._open):
      points = {k: float(v) for k, v in scalars.items()
                if step > tracker.logged.get(k, -1)}
      if points and self._call(tracker, tracker.log, step, points):
        tracker.logged.update(dict.fromkeys(points, step))

  def finish(self, summary: Optional[dict] = None,
             status: str = 'FINISHED'):
    """Logs the summary's figures (summary_figures), at its final step, and
    closes every run with `status` (FINISHED, KILLED or FAILED)."""
    if summary is not None:
      figures = summary_figures(summary)
      self.write_scalars(summary['final_step'], figures)
      for tracker in list(self._open):
        if hasattr(tracker, 'summarize'):
          self._call(tracker, tracker.summarize, figures)
    for tracker in list(self._open):
      self._call(tracker, tracker.finish, status)
    self._open = []

  @contextlib.contextmanager
  def finished_on_error(self):
    """Closes the runs as KILLED (a preemption, Ctrl-C) or FAILED when the
    body raises; the error goes on."""
    try:
      yield
    except BaseException as e:
      self.finish(status='KILLED' if isinstance(
          e, (preemption.Preempted, KeyboardInterrupt)) else 'FAILED')
      raise

  def _call(self, tracker, method, *args) -> bool:
    try:
      method(*args)
      return True
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Tracker %s failed (%s); training goes on without it',
                      tracker.name, _one_line(e))
      self._open.remove(tracker)
      return False


def open_trackers(names: list[str], workdir: str, *, project: str,
                  config: dict, tags: dict) -> Trackers:
  """Starts or reopens the run of each tracker in `names`.

  Args:
    names: from parse_trackers.
    workdir: the run's folder; trackers.json, and by default MLflow's store
      and W&B's files, go there.
    project: the MLflow experiment and W&B project; '' = default_project.
    config: the run's config, as a dict; flattened into params.
    tags: MLflow tags (model, dataset, ...); the sweep and trial names from
      the environment are added.

  Returns:
    The trackers that opened; one that could not is left out with a
    warning line.
  """
  project = project or default_project(workdir)
  state = workdir_files.read_json(workdir, workdir_files.TRACKERS) or {}
  tags = dict(tags, **{key: os.environ[env] for key, env in (
      ('sweep', SWEEP_NAME_ENV), ('trial', TRIAL_NAME_ENV))
                       if os.environ.get(env)})
  params = flat_config(config)
  opened = []
  for name in names:
    try:
      opened.append(TRACKERS[name](workdir, project, params, tags,
                                   state.setdefault(name, {})))
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Tracker %s could not start (%s); training goes on '
                      'without it', name, _one_line(e))
  workdir_files.write_json(os.path.join(workdir, workdir_files.TRACKERS),
                           state)
  trackers = Trackers(opened)
  if opened:
    logging.info('Tracking the run with %s (%s)', ', '.join(
        trackers.names), os.path.join(workdir, workdir_files.TRACKERS))
  return trackers
