"""Joins JAX's distributed runtime when a run spans several processes.

Three cases, decided once at start-up before JAX touches a device:
  * explicit flags (`--coordinator_address`, `--num_processes`,
    `--process_id`): join that job;
  * a cluster JAX detects by itself (SLURM with several tasks, Open MPI):
    `jax.distributed.initialize()` reads it from the environment;
  * otherwise: a plain single-process run.
"""

import os
from typing import Optional

from absl import logging
import jax
from jax.experimental import multihost_utils

import image_folder


class DistributedError(ValueError):
  """Inconsistent multi-process flags."""


def cluster_detected() -> bool:
  """True when launched as one task of several by SLURM or Open MPI."""
  slurm = 'SLURM_JOB_ID' in os.environ and int(
      os.environ.get('SLURM_NTASKS', '1')) > 1
  ompi = int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1
  return slurm or ompi


def initialize(coordinator_address: Optional[str],
               num_processes: Optional[int], process_id: Optional[int],
               heartbeat_timeout_seconds: int) -> bool:
  """Calls jax.distributed.initialize when the run is multi-process.

  Args:
    coordinator_address: HOST:PORT of process 0, or None.
    num_processes: total number of processes, or None.
    process_id: this process's index in [0, num_processes), or None.
    heartbeat_timeout_seconds: a process silent this long is declared dead
      and the others stop with an error instead of waiting for it.

  Returns:
    Whether the distributed runtime was initialised.
  """
  given = {'coordinator_address': coordinator_address,
           'num_processes': num_processes, 'process_id': process_id}
  if any(v is not None for v in given.values()):
    missing = [k for k, v in given.items() if v is None]
    if missing:
      raise DistributedError(
          f'--{" --".join(missing)} missing: a multi-process run needs all '
          f'of --coordinator_address, --num_processes and --process_id')
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedError(
          f'--process_id={process_id} must be in [0, --num_processes='
          f'{num_processes})')
  elif not cluster_detected():
    return False
  # Cross-process collectives on CPU need an implementation; GPUs use NCCL.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id,
      heartbeat_timeout_seconds=heartbeat_timeout_seconds)
  logging.info('Process %d of %d; %d local of %d global devices',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


class Mesh:
  """Places host data and state on all devices: batch split, state copied."""

  def __init__(self):
    # Auto axes: XLA propagates the batch sharding through the model, so
    # layers that make arrays of their own (dropout masks) need no sharding
    # annotations.
    self.device_mesh = jax.make_mesh(
        (jax.device_count(),), ('data',),
        axis_types=(jax.sharding.AxisType.Auto,))
    self.batch = jax.sharding.NamedSharding(
        self.device_mesh, jax.sharding.PartitionSpec('data'))
    self.replicated = jax.sharding.NamedSharding(
        self.device_mesh, jax.sharding.PartitionSpec())

  def put_batch(self, *arrays):
    """Process-local numpy arrays -> global arrays split along axis 0."""
    return tuple(jax.make_array_from_process_local_data(self.batch, a)
                 for a in arrays)

  def put_replicated(self, tree):
    return jax.device_put(tree, self.replicated)


def one_step_in_flight() -> bool:
  """Whether to wait for each step before dispatching the next.

  Several CPU devices in one process (XLA_FLAGS=--xla_force_host_platform_
  device_count=N) share one small thread pool; with many steps queued, their
  all-reduces were seen to deadlock on a 2-core machine. GPUs and a single
  CPU device keep JAX's asynchronous dispatch.
  """
  return jax.default_backend() == 'cpu' and jax.local_device_count() > 1


def processes() -> image_folder.Processes:
  """This job's processes, as the data sources take them: the index, the
  count and an all-gather (which they use to share an image folder's scan
  and to wait for process 0's tfds preparation)."""
  return image_folder.Processes(jax.process_index(), jax.process_count(),
                                multihost_utils.process_allgather)
