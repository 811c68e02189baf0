"""Orbax checkpoints that survive crashes: restore with fallback, never lose one.

A checkpoint is a folder `checkpoints/<step>/` with two items: `state` (the
TrainState pytree) and `meta` (JSON: epoch history, elapsed time and the
config's signature). Orbax writes each into a temporary folder and renames it
when complete, so a crash mid-write leaves a `*.orbax-checkpoint-tmp*` folder
that is never taken for a checkpoint.

On restore the newest checkpoint that reads back wins. Newer ones whose data
is bad (truncated, missing or unparsable files) are moved, untouched, to
`checkpoints_unreadable/` with a log line saying why. Any other error (an
I/O error, out of memory) stops the run and moves nothing, and so does
finding no readable checkpoint at all. With several processes, process 0
lists the checkpoints, every process tries the same step, and they agree on
the outcome before anything is moved or any older step is tried.

The manager keeps the newest checkpoints and the best one, and its
`best_step()` is the one rule that names the best: summary.json,
`--checkpoint=best` and the sweep table all name that step.
"""

import json
import os
import shutil
import time
from typing import Any, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

import faults
import workdir_files

# What a checkpoint's state holds. 1: params-only models; 2: model variable
# collections, parameter EMA, metrics from one definition (top-5 accuracy).
FORMAT = 2

# TensorStore reports errors as ValueError('<STATUS CODE>: ...'). These codes
# say the bytes on disk are not a valid checkpoint; any other ValueError (a
# transient status such as UNAVAILABLE, or a library that cannot read what
# another version wrote) says nothing about the bytes.
_DATA_STATUS = ('OUT_OF_RANGE', 'DATA_LOSS', 'NOT_FOUND', 'INVALID_ARGUMENT',
                'FAILED_PRECONDITION')

# Outcomes of one restore attempt, worst last: the processes act on the worst.
_OK, _BAD_DATA, _FAILED, _INCOMPATIBLE = range(4)


class CheckpointError(RuntimeError):
  """No checkpoint could be restored, or one could not be written."""


class DamagedMetaError(ValueError):
  """A checkpoint's meta item parses but is not what this trainer writes."""


class IncompatibleCheckpointError(ValueError):
  """The workdir's checkpoints come from a config with another state shape."""


def signature(state, **fields) -> dict:
  """What a config must share with a checkpoint to continue from it.

  Args:
    state: the TrainState (or its abstract shapes).
    **fields: named values that must match (model, batch size, data, ...).

  Returns:
    A JSON-able dict: the fields, and shape/dtype of every state leaf.
  """
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  shapes = {jax.tree_util.keystr(path): f'{leaf.dtype}{list(leaf.shape)}'
            for path, leaf in leaves}
  return json.loads(json.dumps(dict(fields, format=FORMAT, state=shapes)))


def _differences(saved: dict, wanted: dict) -> list[str]:
  """Fields and state leaves that differ; fields an older checkpoint did not
  record are not compared."""
  out = []
  for key in sorted(wanted):
    if key != 'state' and key in saved and saved[key] != wanted[key]:
      out.append(f'{key} {saved[key]!r} there vs {wanted[key]!r} here')
  saved_state, wanted_state = saved.get('state', {}), wanted.get('state', {})
  for path in sorted(set(saved_state) | set(wanted_state)):
    if saved_state.get(path) != wanted_state.get(path):
      out.append(f'state{path} {saved_state.get(path)} there vs '
                 f'{wanted_state.get(path)} here')
  return out


def finished_steps(directory: str) -> list[int]:
  """Steps with a complete checkpoint folder, oldest first."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory,
                                                                 name)))


def _checkpointer() -> ocp.Checkpointer:
  # Each process restores on its own (the state is replicated, so every
  # process reads all of it): no Orbax barrier that a peer whose read failed
  # would never reach. The processes agree on the outcome afterwards.
  return ocp.Checkpointer(
      ocp.CompositeCheckpointHandler(),
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          active_processes={jax.process_index()}))


def read_meta(directory: str, step: int) -> dict:
  """The JSON `meta` item of checkpoint `step`; raises if unreadable."""
  checkpointer = _checkpointer()
  try:
    meta = checkpointer.restore(
        os.path.join(directory, str(step)),
        args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  finally:
    checkpointer.close()
  if not isinstance(meta, dict) or 'signature' not in meta:
    raise DamagedMetaError('meta item has no signature')
  return meta


def check_compatible(meta: dict, wanted: dict, path: str):
  """Raises IncompatibleCheckpointError if `meta` was written by a config
  with another signature; the message names the first differences."""
  saved_format = meta['signature'].get('format', 1)
  if saved_format != wanted.get('format', FORMAT):
    raise IncompatibleCheckpointError(
        f'{path} was written by another version of this trainer (checkpoint '
        f'format {saved_format}; this version reads format {FORMAT}, whose '
        f'state holds other fields). Use a new --workdir, or the version '
        f'that wrote it')
  differences = _differences(meta['signature'], wanted)
  if differences:
    raise IncompatibleCheckpointError(
        f'{path} was written by an incompatible config: ' +
        '; '.join(differences[:3]) +
        (f' (and {len(differences) - 3} more)' if len(differences) > 3
         else '') + '. Use a new --workdir, or the config it was made with')


def restore_step(directory: str, step: int, target, wanted: dict):
  """Restores checkpoint `step` as (state, meta); raises if it cannot.

  Args:
    directory: the `checkpoints/` folder.
    step: which checkpoint.
    target: a pytree of numpy arrays with the state's structure, shapes and
      dtypes; the state comes back as numpy arrays like it.
    wanted: this config's `signature`.
  """
  faults.io_error_if('restore', step)
  meta = read_meta(directory, step)
  path = os.path.join(directory, str(step))
  check_compatible(meta, wanted, path)
  checkpointer = _checkpointer()
  try:
    state = checkpointer.restore(path, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target))).state
  finally:
    checkpointer.close()
  return state, meta


def is_bad_data(error: BaseException) -> bool:
  """Whether a restore error shows the checkpoint's bytes are bad.

  Only then may the checkpoint be moved aside: unparsable or missing files,
  a truncated stream, TensorStore's data status codes. I/O errors,
  permissions, out-of-memory and errors of a library that cannot read what
  another version wrote (a KeyError or ValueError of its own) say nothing
  about the bytes: the run stops instead, so that a good checkpoint is never
  moved and a passing fault never makes the run quietly resume from an older
  step.
  """
  if isinstance(error, (json.JSONDecodeError, FileNotFoundError,
                        NotADirectoryError, IsADirectoryError, EOFError,
                        UnicodeDecodeError, DamagedMetaError)):
    return True
  return isinstance(error, ValueError) and str(error).startswith(
      _DATA_STATUS)


def _reason(error: BaseException) -> str:
  text = str(error).splitlines()[0][:300] if str(error) else ''
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


def _move_aside(directory: str, step: int) -> str:
  parent = os.path.join(os.path.dirname(directory),
                        workdir_files.UNREADABLE_CHECKPOINTS)
  os.makedirs(parent, exist_ok=True)
  target = os.path.join(parent, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
  while os.path.exists(target):
    target += '_'
  shutil.move(os.path.join(directory, str(step)), target)
  return target


def _worst_everywhere(outcome: int) -> int:
  """The worst outcome over all processes (a collective)."""
  if jax.process_count() == 1:
    return outcome
  return int(np.max(multihost_utils.process_allgather(np.int32(outcome))))


def _steps_of_process_0(directory: str) -> list[int]:
  """Process 0's list of finished steps, on every process."""
  steps = finished_steps(directory)
  if jax.process_count() == 1:
    return steps
  count = int(multihost_utils.broadcast_one_to_all(np.int32(len(steps))))
  if count == 0:
    return []
  # Every process passes an array of process 0's length; another process's
  # own listing (a lagging shared filesystem) may hold more or fewer steps.
  local = (np.array(steps, np.int64) if jax.process_index() == 0
           else np.zeros(count, np.int64))
  return [int(s) for s in multihost_utils.broadcast_one_to_all(local)]


def restore_latest(directory: str, target, wanted: dict
                   ) -> Optional[tuple[Any, dict]]:
  """Restores the newest readable checkpoint in `directory`.

  Every process calls this; all restore the same step or all fail.

  Args:
    directory: the `checkpoints/` folder.
    target: numpy pytree of the state's shapes and dtypes (see restore_step).
    wanted: this config's `signature`; a checkpoint with another one is
      refused (IncompatibleCheckpointError), not skipped.

  Returns:
    (state as numpy arrays, meta), or None when there is no checkpoint.

  Raises:
    CheckpointError: checkpoints exist but none restores, or one failed for a
      reason other than bad data; nothing was moved.
  """
  failures = []
  for step in reversed(_steps_of_process_0(directory)):
    error, outcome = None, _OK
    try:
      state, meta = restore_step(directory, step, target, wanted)
    except IncompatibleCheckpointError as e:
      error, outcome = e, _INCOMPATIBLE
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore raise many types; is_bad_data sorts them.
      error, outcome = e, _BAD_DATA if is_bad_data(e) else _FAILED
    worst = _worst_everywhere(outcome)
    if worst == _INCOMPATIBLE:
      raise error if outcome == _INCOMPATIBLE else IncompatibleCheckpointError(
          f'another process refused checkpoint {step} in {directory}')
    if worst == _FAILED:
      where = (_reason(error) if error is not None and outcome == _FAILED
               else 'failed on another process')
      raise CheckpointError(
          f'checkpoint {step} in {directory} could not be read ({where}); '
          f'this does not show the checkpoint is damaged, so nothing was '
          f'moved. Fix the cause and run the same command again')
    if worst == _BAD_DATA:
      reason = _reason(error) if error is not None else (
          'unreadable on another process')
      logging.warning('Checkpoint %s/%d cannot be restored (%s); trying an '
                      'older one', directory, step, reason)
      failures.append((step, reason))
      continue
    if jax.process_index() == 0:  # One mover on a shared filesystem.
      for bad_step, reason in failures:
        target_dir = _move_aside(directory, bad_step)
        logging.warning('Moved unreadable checkpoint %d to %s (%s)',
                        bad_step, target_dir, reason)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('checkpoint restored')
    return state, meta
  if failures:
    raise CheckpointError(
        f'no checkpoint in {directory} can be restored: ' + '; '.join(
            f'step {s}: {r}' for s, r in failures) +
        '. Nothing was moved or deleted; use a new --workdir to start over')
  return None


def _selection_accuracy(metrics: dict) -> float:
  """The accuracy the best checkpoint is chosen by: validation if the run
  has a validation split, else test."""
  return metrics.get('validation_accuracy', metrics['test_accuracy'])


def _options(**kwargs) -> ocp.CheckpointManagerOptions:
  # best_fn makes Orbax's best_step() rank by the same metric that BestN
  # keeps by, with the same rule for ties (the latest of equals).
  return ocp.CheckpointManagerOptions(best_fn=_selection_accuracy,
                                      best_mode='max', **kwargs)


def create_manager(directory: str, max_to_keep: int) -> ocp.CheckpointManager:
  """Keeps the newest `max_to_keep` checkpoints and the best by validation
  accuracy (test accuracy in runs without a validation split).

  Only checkpoints saved right after an evaluation carry the metric, so the
  best one holds exactly the state that was evaluated.
  """
  policy = preservation_policy.AnyPreservationPolicy([
      preservation_policy.LatestN(n=max_to_keep),
      preservation_policy.BestN(
          get_metric_fn=_selection_accuracy, n=1,
          keep_checkpoints_without_metrics=False)])
  return ocp.CheckpointManager(
      directory, item_names=('state', 'meta'),
      options=_options(preservation_policy=policy, create=True))


def find_best_step(directory: str) -> Optional[int]:
  """The best checkpoint in `directory` as Orbax ranks it (the manager's
  best_step(), which a run's summary.json records too); None if no
  checkpoint carries a metric. Reads only."""
  manager = ocp.CheckpointManager(directory, item_names=('state', 'meta'),
                                  options=_options(read_only=True))
  try:
    return manager.best_step()
  finally:
    manager.close()


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict,
         metrics: Optional[dict] = None):
  """Starts an asynchronous save; errors of earlier saves surface here."""
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                 metrics=metrics, force=True)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(_write_failure(manager, step, e)) from e


def wait(manager: ocp.CheckpointManager):
  """Blocks until pending saves are on disk."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(_write_failure(manager, None, e)) from e


def _write_failure(manager, step, e) -> str:
  del step  # The failing write may be an earlier, asynchronous one.
  kept = finished_steps(str(manager.directory))
  detail = str(e).splitlines()[0][:300] if str(e) else ''
  return (f'could not write a checkpoint in {manager.directory} '
          f'({type(e).__name__}: {detail}); disk full or not writable? '
          f'Earlier checkpoints are kept: {kept or "none"}')
