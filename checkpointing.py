"""Orbax checkpoints that survive crashes: restore with fallback, never lose one.

A checkpoint is a folder `checkpoints/<step>/` with two items: `state` (the
TrainState pytree) and `meta` (JSON: epoch history, elapsed time and the
config's signature). Orbax writes each into a temporary folder and renames it
when complete, so a crash mid-write leaves a `*.orbax-checkpoint-tmp*` folder
that is never taken for a checkpoint.

On restore the newest checkpoint that reads back wins. Newer ones that do not
read are moved, untouched, to `checkpoints_unreadable/` with a log line saying
why; if none reads, the run stops and moves nothing.
"""

import os
import shutil
import time
from typing import Any, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

UNREADABLE_DIR = 'checkpoints_unreadable'


class CheckpointError(RuntimeError):
  """No checkpoint could be restored, or one could not be written."""


class IncompatibleCheckpointError(ValueError):
  """The workdir's checkpoints come from a config with another state shape."""


def signature(state, **fields) -> dict:
  """What a config must share with a checkpoint to continue from it.

  Args:
    state: the TrainState (or its abstract shapes).
    **fields: named values that must match (model, image shape, ...).

  Returns:
    A JSON-able dict: the fields, and shape/dtype of every state leaf.
  """
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  shapes = {jax.tree_util.keystr(path): f'{leaf.dtype}{list(leaf.shape)}'
            for path, leaf in leaves}
  return dict(fields, state=shapes)


def _differences(saved: dict, wanted: dict) -> list[str]:
  out = []
  for key in sorted(set(saved) | set(wanted)):
    if key == 'state':
      continue
    if saved.get(key) != wanted.get(key):
      out.append(f'{key} {saved.get(key)!r} there vs {wanted.get(key)!r} here')
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


def restore_step(directory: str, step: int, abstract_state, wanted: dict):
  """Restores checkpoint `step` (state, meta); raises if it cannot."""
  path = os.path.join(directory, str(step))
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    meta = checkpointer.restore(
        path, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    if not isinstance(meta, dict) or 'signature' not in meta:
      raise ValueError('meta item has no signature')
  finally:
    checkpointer.close()
  differences = _differences(meta['signature'], wanted)
  if differences:
    raise IncompatibleCheckpointError(
        f'{path} was written by an incompatible config: ' +
        '; '.join(differences[:3]) +
        (f' (and {len(differences) - 3} more)' if len(differences) > 3
         else '') + '. Use a new --workdir, or the config it was made with')
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    state = checkpointer.restore(path, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state))).state
  finally:
    checkpointer.close()
  return state, meta


def _move_aside(directory: str, step: int) -> str:
  parent = os.path.join(os.path.dirname(directory), UNREADABLE_DIR)
  os.makedirs(parent, exist_ok=True)
  target = os.path.join(parent, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
  while os.path.exists(target):
    target += '_'
  shutil.move(os.path.join(directory, str(step)), target)
  return target


def restore_latest(directory: str, abstract_state, wanted: dict
                   ) -> Optional[tuple[Any, dict]]:
  """Restores the newest readable checkpoint in `directory`.

  Args:
    directory: the `checkpoints/` folder.
    abstract_state: shapes, dtypes and shardings of the state to restore.
    wanted: this config's `signature`; a checkpoint with another one is
      refused (IncompatibleCheckpointError), not skipped.

  Returns:
    (state, meta) or None when there is no checkpoint at all.

  Raises:
    CheckpointError: checkpoints exist but none of them restores.
  """
  steps = finished_steps(directory)
  failures = []
  for step in reversed(steps):
    try:
      state, meta = restore_step(directory, step, abstract_state, wanted)
    except IncompatibleCheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore raise many types for unreadable data.
      reason = f'{type(e).__name__}: {str(e).splitlines()[0][:300]}' if str(
          e) else type(e).__name__
      logging.warning('Checkpoint %s/%d cannot be restored (%s); trying an '
                      'older one', directory, step, reason)
      failures.append((step, reason))
      continue
    if jax.process_index() == 0:  # One mover on a shared filesystem.
      for bad_step, reason in failures:
        target = _move_aside(directory, bad_step)
        logging.warning('Moved unreadable checkpoint %d to %s (%s)',
                        bad_step, target, reason)
    if failures and jax.process_count() > 1:
      multihost_utils.sync_global_devices('unreadable checkpoints moved')
    return state, meta
  if failures:
    raise CheckpointError(
        f'no checkpoint in {directory} can be restored: ' + '; '.join(
            f'step {s}: {r}' for s, r in failures) +
        '. Nothing was moved or deleted; use a new --workdir to start over')
  return None


def create_manager(directory: str, max_to_keep: int) -> ocp.CheckpointManager:
  """Keeps the newest `max_to_keep` checkpoints and the best by test accuracy.

  Only checkpoints saved right after an evaluation carry the metric, so the
  best one holds exactly the state that was evaluated.
  """
  policy = preservation_policy.AnyPreservationPolicy([
      preservation_policy.LatestN(n=max_to_keep),
      preservation_policy.BestN(
          get_metric_fn=lambda m: m['test_accuracy'], n=1,
          keep_checkpoints_without_metrics=False)])
  return ocp.CheckpointManager(
      directory, item_names=('state', 'meta'),
      options=ocp.CheckpointManagerOptions(preservation_policy=policy,
                                           create=True))


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
