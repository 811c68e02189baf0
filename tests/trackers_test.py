"""Tests for trackers.py: real MLflow and W&B runs of tiny trainings, a run
crashed and resumed that logs each point once, a real `mlflow server`, and
the values refused before a run starts."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import portpicker
import pytest
from tensorboard.util import tensor_util

import config_rules
import conftest
import event_files
import faults
import train
import trackers
import workdir_files

# 24 steps (0.75 of an epoch of small_data_dir at batch 8), logged every 4,
# checkpointed every 8: a crash at step 20 leaves 17..20 to replay.
STEPS = {'num_train_steps': 24, 'log_every_steps': 4,
         'checkpoint_every_steps': 8}
TOTAL_STEPS = 24


def run(data_dir, workdir, **overrides):
  config = conftest.tiny_config(data_dir, **dict(STEPS, **overrides))
  return train.train_and_evaluate(config, workdir)


@pytest.fixture(scope='module')
def tracker_env(tmp_path_factory):
  """No W&B credentials (so W&B runs offline), its folders in a temporary
  home, no tracking URI or sweep names from the caller's environment."""
  home = tmp_path_factory.mktemp('tracker_home')
  with pytest.MonkeyPatch.context() as patch:
    for name in ('WANDB_API_KEY', 'WANDB_MODE', 'MLFLOW_TRACKING_URI',
                 trackers.SWEEP_NAME_ENV, trackers.TRIAL_NAME_ENV,
                 faults.ENV):
      patch.delenv(name, raising=False)
    patch.setenv('NETRC', str(home / 'netrc'))  # Missing: no stored key.
    for name in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR'):
      patch.setenv(name, str(home / name.lower()))
    yield patch
  # wandb.init leaves its service's address for child processes to share;
  # later tests' trainers start their own.
  os.environ.pop('WANDB_SERVICE', None)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, small_data_dir, tracker_env):
  """The same run without trackers."""
  del tracker_env
  workdir = str(tmp_path_factory.mktemp('reference'))
  run(small_data_dir, workdir)
  return workdir


def tb_points(workdir) -> dict:
  """{(tag, step): float32} of the non-timing TensorBoard scalars."""
  points = {}
  for path in event_files.event_paths(workdir):
    for event in event_files.read_events(path):
      for value in event.summary.value:
        if value.tag.startswith('_hparams_'):
          continue
        points[value.tag, event.step] = np.float32(
            tensor_util.make_ndarray(value.tensor))
  return points


def mlflow_client(workdir):
  from mlflow import tracking  # pylint: disable=g-import-not-at-top
  return tracking.MlflowClient(
      f'sqlite:///{os.path.join(workdir, workdir_files.MLFLOW_DB)}')


def mlflow_points(client, run_id) -> dict:
  """{(key, step): value} of every metric point; fails on a duplicate."""
  points = {}
  for key in client.get_run(run_id).data.metrics:
    for metric in client.get_metric_history(run_id, key):
      assert (key, metric.step) not in points, f'twice: {key}@{metric.step}'
      points[key, metric.step] = metric.value
  return points


def assert_points_match(points, workdir, complete_after=-1):
  """`points` hold the TensorBoard scalars of `workdir` (float32-equal;
  timings: the same (tag, step)), all of them after step `complete_after`,
  and, at the final step, summary.json's figures exactly."""
  summary = json.load(open(os.path.join(workdir, workdir_files.SUMMARY)))
  figures = trackers.summary_figures(summary)
  assert {p: v for p, v in points.items() if p[0] in figures} == {
      (k, summary['final_step']): v for k, v in figures.items()}
  logged = {p: v for p, v in points.items() if p[0] not in figures}
  tb = tb_points(workdir)
  assert set(logged) <= set(tb)
  assert {p for p in tb if p[1] > complete_after} <= set(logged)
  for (key, step), value in logged.items():
    if key not in conftest.TIMING_TAGS:
      assert np.float32(value) == tb[key, step], (key, step)


# Real training runs logging to MLflow (about 8 s): make test-all, CI.
@pytest.mark.slow
def test_an_mlflow_run_holds_the_config_tags_and_every_point(
    tmp_path, small_data_dir, reference, tracker_env, monkeypatch):
  del tracker_env
  monkeypatch.setenv(trackers.SWEEP_NAME_ENV, 'lr_sweep')
  monkeypatch.setenv(trackers.TRIAL_NAME_ENV, 'trial_3')
  workdir = str(tmp_path / 'w')
  config = conftest.tiny_config(small_data_dir, trackers='mlflow', **STEPS)
  config.model_kwargs.dtype = 'float32'  # The default: the same numbers.
  train.train_and_evaluate(config, workdir)
  conftest.assert_same_run(workdir, reference, TOTAL_STEPS)

  client = mlflow_client(workdir)
  experiment = client.get_experiment_by_name(tmp_path.name)
  [found] = client.search_runs([experiment.experiment_id])
  state = workdir_files.read_json(workdir, workdir_files.TRACKERS)
  assert found.info.run_id == state['mlflow']['run_id']
  assert (found.info.status, found.info.run_name) == ('FINISHED', 'trial_3')
  saved = workdir_files.read_json(workdir, workdir_files.CONFIG)
  assert found.data.params == {k: str(v) for k, v in
                               trackers.flat_config(saved).items()}
  assert found.data.params['model_kwargs.dtype'] == 'float32'
  assert found.data.params['trackers'] == 'mlflow'
  tags = found.data.tags
  assert {k: tags[k] for k in ('model', 'dataset', 'sweep', 'trial')} == {
      'model': 'cnn', 'dataset': 'mnist', 'sweep': 'lr_sweep',
      'trial': 'trial_3'}
  assert tags['data_source'] == f'idx:{small_data_dir}'
  points = mlflow_points(client, found.info.run_id)
  assert_points_match(points, workdir)
  assert points['best_test_accuracy', TOTAL_STEPS] == json.load(open(
      os.path.join(workdir, 'summary.json')))['best_test_accuracy']


@pytest.fixture(scope='module')
def resumed(tmp_path_factory, small_data_dir, tracker_env):
  """A run to both trackers that crashed after logging step 20 (its last
  checkpoint: 16), then resumed; with trackers.json after the crash."""
  workdir = str(tmp_path_factory.mktemp('resumed') / 'w')
  tracker_env.setenv(faults.ENV, 'raise:log:20')
  with pytest.raises(faults.FaultInjected):
    run(small_data_dir, workdir, trackers='mlflow,wandb')
  tracker_env.delenv(faults.ENV)
  assert conftest.checkpoint_steps(workdir)[-1] == 16
  crashed = workdir_files.read_json(workdir, workdir_files.TRACKERS)
  client = mlflow_client(workdir)
  status = client.get_run(crashed['mlflow']['run_id']).info.status
  last_loss = client.get_metric_history(crashed['mlflow']['run_id'],
                                        'train_loss')[-1].step
  run(small_data_dir, workdir, trackers='mlflow,wandb')
  return workdir, crashed, (status, last_loss)


# Real training runs logging to MLflow (about 8 s): make test-all, CI.
@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run_logging_each_point_once(
    resumed, reference):
  workdir, crashed, after_crash = resumed
  assert after_crash == ('FAILED', 20)  # Steps 17..20 are replayed.
  client = mlflow_client(workdir)
  [found] = client.search_runs(
      [client.get_experiment_by_name(os.path.basename(os.path.dirname(
          workdir))).experiment_id])
  assert found.info.run_id == crashed['mlflow']['run_id']
  assert found.info.status == 'FINISHED'
  assert_points_match(mlflow_points(client, found.info.run_id), workdir)
  conftest.assert_same_run(workdir, reference, TOTAL_STEPS)


def wandb_sessions(workdir) -> list:
  """The .wandb file of each session of the workdir's W&B run, oldest
  first."""
  run_id = trackers.wandb_run_id(workdir)
  return sorted(glob.glob(os.path.join(
      workdir, 'wandb', f'offline-run-*-{run_id}', f'run-{run_id}.wandb')))


def wandb_run(workdir):
  """(points {(key, step): value}, config, summary of the last session) of
  the workdir's offline W&B run; fails on a point logged twice."""
  points, config, summary = {}, {}, {}
  sessions = wandb_sessions(workdir)
  for path in sessions:
    for record in trackers.read_wandb_records(path):
      kind = record.WhichOneof('record_type')
      if kind in ('run', 'config'):
        updates = (record.run.config if kind == 'run' else
                   record.config).update
        config.update({i.key: json.loads(i.value_json) for i in updates})
      elif kind == 'history':
        step = record.history.step.num
        for item in record.history.item:
          key = item.key or '.'.join(item.nested_key)
          if not key.startswith('_'):  # W&B's own: _step, _runtime, ...
            assert (key, step) not in points, f'twice: {key}@{step}'
            points[key, step] = json.loads(item.value_json)
      elif kind == 'summary' and path == sessions[-1]:
        summary.update({(i.key or '.'.join(i.nested_key)):
                        json.loads(i.value_json)
                        for i in record.summary.update})
  return points, config, summary


def test_wandb_offline_runs_continue_one_id_with_config_and_summary(
    resumed):
  workdir = resumed[0]
  assert resumed[1]['wandb']['run_id'] == trackers.wandb_run_id(workdir)
  # One folder per session, each for `wandb sync`, both of the same run.
  assert len(wandb_sessions(workdir)) == 2
  points, config, summary = wandb_run(workdir)
  assert_points_match(points, workdir)
  saved = workdir_files.read_json(workdir, workdir_files.CONFIG)
  assert {k: v for k, v in config.items() if not k.startswith('_')} == (
      trackers.flat_config(saved))
  written = json.load(open(os.path.join(workdir, 'summary.json')))
  assert summary['best_test_accuracy'] == written['best_test_accuracy']
  assert summary['final_step'] == TOTAL_STEPS


def test_an_unknown_tracker_is_one_line_before_the_workdir_exists(
    tmp_path, idx_dir):
  workdir = tmp_path / 'new'
  with pytest.raises(config_rules.ConfigError) as error:
    run(idx_dir, str(workdir), trackers='mlflow,neptune')
  assert str(error.value) == (
      "unknown tracker 'neptune' in trackers 'mlflow,neptune'; accepted: "
      "mlflow, wandb, comma-separated (empty: TensorBoard only)")
  assert not workdir.exists()


def test_a_tracker_not_installed_names_the_pip_command(monkeypatch):
  from configs import default  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, 'wandb', None)  # As if not installed.
  config = default.get_config()
  config.trackers = 'wandb'
  with pytest.raises(config_rules.ConfigError) as error:
    config_rules.validate_config(config, device_count=1)
  assert str(error.value) == (
      "trackers 'wandb' needs the wandb package, which is not installed: "
      "pip install -r requirements-extras.txt")
  # Eval and predict log nothing: a run's saved config still loads.
  config_rules.validate_config(config, device_count=1, training=False)


def test_a_resume_that_changes_the_trackers_says_so(caplog):
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  saved = config.to_dict()
  config.trackers, config.tracker_project = 'mlflow', 'mnist'
  caplog.set_level('WARNING')
  config_rules.log_config_changes(saved, config, 16)
  assert "Resuming at step 16 with trackers='mlflow'" in caplog.text
  assert "Resuming at step 16 with tracker_project='mnist'" in caplog.text
  # Only the changed keys: an unchanged dict of options is not one.
  assert 'augment_kwargs' not in caplog.text


def test_a_tracker_that_cannot_start_leaves_training_as_it_was(
    tmp_path, small_data_dir, reference, tracker_env, monkeypatch, caplog):
  del tracker_env
  # Nothing listens there: each request is refused at once.
  monkeypatch.setenv('MLFLOW_TRACKING_URI',
                     f'http://127.0.0.1:{portpicker.pick_unused_port()}')
  monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
  caplog.set_level('WARNING')
  workdir = str(tmp_path / 'w')
  run(small_data_dir, workdir, trackers='mlflow')
  conftest.assert_same_run(workdir, reference, TOTAL_STEPS)
  lines = [r.getMessage() for r in caplog.records
           if r.getMessage().startswith('Tracker mlflow')]
  assert len(lines) == 1 and 'could not start' in lines[0], lines


def _wait_for_server(url, proc, seconds):
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    assert proc.poll() is None, f'mlflow server exited {proc.returncode}'
    try:
      with urllib.request.urlopen(f'{url}/health', timeout=2) as answer:
        if answer.status == 200:
          return
    except OSError:
      time.sleep(0.5)
  raise AssertionError(f'mlflow server not up at {url} after {seconds} s')


def _stop(proc):
  """Ends the server's process group (it runs a worker process)."""
  if proc.poll() is None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
      proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()


# About 20 s: the server starts in about 5 s, then two tiny runs.
@pytest.mark.slow
def test_a_run_logs_to_an_mlflow_server_and_outlives_it(
    tmp_path, small_data_dir, reference, tracker_env, monkeypatch, caplog):
  del tracker_env
  port = portpicker.pick_unused_port()
  url = f'http://127.0.0.1:{port}'
  mlflow = os.path.join(os.path.dirname(sys.executable), 'mlflow')
  with open(tmp_path / 'server.log', 'w') as log:
    proc = subprocess.Popen(
        [mlflow, 'server', '--backend-store-uri',
         f'sqlite:///{tmp_path / "server.db"}', '--host', '127.0.0.1',
         '--port', str(port), '--workers', '1'], cwd=tmp_path, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
  try:
    _wait_for_server(url, proc, 60)
    monkeypatch.setenv('MLFLOW_TRACKING_URI', url)
    monkeypatch.setenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '0')
    first = str(tmp_path / 'first')
    run(small_data_dir, first, trackers='mlflow')
    from mlflow import tracking  # pylint: disable=g-import-not-at-top
    client = tracking.MlflowClient(url)
    run_id = workdir_files.read_json(first, workdir_files.TRACKERS)[
        'mlflow']['run_id']
    found = client.get_run(run_id)
    assert found.info.status == 'FINISHED'
    assert client.get_experiment(
        found.info.experiment_id).name == tmp_path.name
    assert found.data.params['num_train_steps'] == str(TOTAL_STEPS)
    assert_points_match(mlflow_points(client, run_id), first)
    assert not os.path.exists(os.path.join(first, workdir_files.MLFLOW_DB))

    # The server goes away after step 8 is logged: the run goes on.
    trigger = faults.trigger

    def stop_server_at_step_8(point, step):
      if (point, step) == ('log', 8):
        _stop(proc)
      trigger(point, step)

    monkeypatch.setattr(faults, 'trigger', stop_server_at_step_8)
    caplog.set_level('WARNING')
    second = str(tmp_path / 'second')
    run(small_data_dir, second, trackers='mlflow')
    conftest.assert_same_run(second, reference, TOTAL_STEPS)
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith('Tracker mlflow')]
    assert len(lines) == 1 and 'training goes on without it' in lines[0]
  finally:
    _stop(proc)


# About 10 s: main.py killed with SIGKILL after logging step 20 (its last
# checkpoint: 16), then resumed in this process.
@pytest.mark.slow
def test_a_run_killed_for_real_logs_each_point_once_after_its_resume(
    tmp_path, small_data_dir, reference, tracker_env, monkeypatch):
  del tracker_env
  # W&B leaves its service's address in the environment, for child
  # processes to share; the killed run's would leave its run in use there.
  monkeypatch.delenv('WANDB_SERVICE', raising=False)
  workdir = str(tmp_path / 'w')
  killed = conftest.run_python(
      ['main.py', f'--workdir={workdir}', '--config=configs/default.py',
       f'--config.data_dir={small_data_dir}', '--config.batch_size=8',
       '--config.eval_batch_size=20', '--config.max_checkpoints_to_keep=10',
       *[f'--config.{k}={v}' for k, v in STEPS.items()],
       '--config.trackers=mlflow,wandb'],
      env={faults.ENV: 'kill:log:20'}, timeout=240)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  crashed = workdir_files.read_json(workdir, workdir_files.TRACKERS)
  run(small_data_dir, workdir, trackers='mlflow,wandb')
  conftest.assert_same_run(workdir, reference, TOTAL_STEPS)
  client = mlflow_client(workdir)
  assert client.get_run(crashed['mlflow']['run_id']).info.status == (
      'FINISHED')
  assert_points_match(mlflow_points(client, crashed['mlflow']['run_id']),
                      workdir)
  # W&B writes its log in 32 KiB blocks: the killed session's partial block
  # is lost, and the points of steps up to the checkpoint are not replayed.
  assert len(wandb_sessions(workdir)) == 2
  assert_points_match(wandb_run(workdir)[0], workdir, complete_after=16)


# Started at the same instant, in processes of their own: a new SQLite store
# is created once, under the lock beside it, and both runs are in it.
OPEN_AT = '''
import os, sys, time
sys.path.insert(0, {root!r})
import trackers
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
opened = trackers.open_trackers(['mlflow'], sys.argv[1], project='sweep',
                                config={{'seed': 0}}, tags={{}})
print(opened.names)
'''


# Two processes importing MLflow (about 10 s): make test-all and CI.
@pytest.mark.slow
def test_trials_starting_at_once_share_a_new_sqlite_store(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  store = tmp_path / 'mlflow.db'
  env = dict(os.environ, MLFLOW_TRACKING_URI=f'sqlite:///{store}')
  start = time.time() + 8  # After both have imported MLflow.
  code = OPEN_AT.format(root=conftest.ROOT)
  procs = []
  for name in ('trial_000', 'trial_001'):
    (tmp_path / name).mkdir()
    procs.append(subprocess.Popen(
        [sys.executable, '-c', code, str(tmp_path / name), str(start)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outputs = [p.communicate(timeout=120) for p in procs]
  for out, err in outputs:
    assert 'could not start' not in err, err[-2000:]
  import mlflow  # pylint: disable=g-import-not-at-top
  client = mlflow.tracking.MlflowClient(f'sqlite:///{store}')
  runs = client.search_runs(
      [client.get_experiment_by_name('sweep').experiment_id])
  assert len(runs) == 2
