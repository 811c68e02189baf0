"""Cuts splits into batches: the training order, eval batches, read-ahead.

Training batches are taken from a permutation that depends only on (seed,
epoch), so the batch of any step can be recomputed after a restart and a
resumed run needs no iterator state; each process takes its contiguous
slice of every global batch. Evaluation batches cover every example exactly
once, the last one padded and masked. Splits that are not in memory are
decoded ahead of the step by Grain's threads, in order; `prefetch` sends
batches to the devices ahead of the step, and `device_train_batches` puts
the training batches of a run on a mesh, from the host or gathered on the
devices from a copy of the set there.
"""

import collections
import functools
from typing import Callable, Iterator, Sequence

from absl import logging
import jax
import numpy as np

import data_sources
import image_folder

# Read-ahead threads for splits that are not in memory.
READ_THREADS = image_folder.NUM_THREADS


def fit_eval_batch_size(eval_batch_size: int, split_sizes: Sequence[int],
                        device_count: int) -> int:
  """`eval_batch_size`, cut to the largest evaluated split rounded up to the
  device count: a larger batch would only evaluate padding.

  The one rule for training and eval mode alike, so both evaluate in the same
  batches and report the same numbers. Metrics do not depend on the batch
  size beyond the float summation order.
  """
  largest = max(split_sizes)
  return min(eval_batch_size, -(-largest // device_count) * device_count)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The training order of one epoch; depends only on (seed, epoch)."""
  rng = np.random.Generator(np.random.PCG64([seed, epoch]))
  return rng.permutation(num_examples)


def balanced_draw(labels: np.ndarray, seed: int, epoch: int) -> np.ndarray:
  """sampling=balanced: the examples of one epoch drawn with replacement,
  each class as likely as any other (each example with probability 1 /
  (classes present * its class's count)); depends only on (seed, epoch)."""
  counts = np.bincount(labels)
  weights = 1.0 / (np.count_nonzero(counts) * counts[labels])
  rng = np.random.Generator(np.random.PCG64([seed, epoch, 1]))
  return rng.choice(len(labels), size=len(labels), p=weights / weights.sum())


SAMPLINGS = ('uniform', 'balanced')


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Number of full training batches per epoch (the remainder is dropped).

  Raises:
    data_sources.DataError: not even one batch fits the training set.
  """
  if batch_size > num_examples:
    raise data_sources.DataError(
        f'batch_size {batch_size} is larger than the training set '
        f'({num_examples} examples); accepted: at most {num_examples}')
  return num_examples // batch_size


def train_batch_indices(num_examples: int, batch_size: int, seed: int,
                        start_step: int = 0, process_index: int = 0,
                        process_count: int = 1, balanced_labels=None
                        ) -> Callable[[int], np.ndarray]:
  """indices(i): the examples of step start_step + i for this process.

  A function of (seed, step) only: each epoch is a permutation of its own
  (the last two are cached), or with `balanced_labels` (sampling=balanced,
  the training labels) a class-balanced draw, cut into full global batches
  of `batch_size`; process p takes the p-th contiguous slice, so the global
  batch is the same whatever the process count.
  """
  per_epoch = steps_per_epoch(num_examples, batch_size)
  local = batch_size // process_count
  lo = process_index * local
  permutation = functools.lru_cache(maxsize=2)(
      (lambda epoch: epoch_permutation(num_examples, seed, epoch))
      if balanced_labels is None else
      (lambda epoch: balanced_draw(balanced_labels, seed, epoch)))

  def indices(i):
    epoch, index = divmod(start_step + i, per_epoch)
    start = index * batch_size + lo
    return permutation(epoch)[start:start + local]

  return indices


def _read_batches(split, batch_indices: Callable[[int], np.ndarray],
                  count: int, threads: int) -> Iterator[tuple]:
  """split.get(batch_indices(i)) for i in range(count), in order.

  In-memory splits are gathered here, on the caller's thread (a copy of a few
  hundred KB). Other splits decode files: Grain reads their batches ahead on
  `threads` threads, in order, so decoding overlaps training and the batch of
  each step stays a pure function of its index.
  """
  if data_sources.in_memory(split) or threads <= 0:
    for i in range(count):
      yield split.get(batch_indices(i))
    return
  import grain  # pylint: disable=g-import-not-at-top  # 1 s to import.
  dataset = grain.MapDataset.range(count).map(
      lambda i: split.get(batch_indices(i)))
  yield from dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=threads, prefetch_buffer_size=2 * threads))


def train_batches(split, batch_size: int, seed: int, start_step: int,
                  num_steps: int, process_index: int = 0,
                  process_count: int = 1, threads: int = 0,
                  balanced_labels=None
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (images, labels) training batches for steps [start, start+num).

  Args:
    split: the training split (any split type).
    batch_size: examples per global batch (over all processes).
    seed: data-order seed.
    start_step: the first step to produce, e.g. a restored step.
    num_steps: how many batches to produce.
    process_index: this process; it gets its contiguous slice of each global
      batch, so the global batch is the same whatever the process count, and
      reads only the examples of that slice.
    process_count: number of processes; must divide batch_size.
    threads: read-ahead threads for splits not in memory (0: none).
    balanced_labels: the split's labels, to draw class-balanced batches
      (train_batch_indices); None: each epoch a permutation.
  """
  indices = train_batch_indices(len(split), batch_size, seed, start_step,
                                process_index, process_count,
                                balanced_labels)
  return _read_batches(split, indices, num_steps, threads)


def eval_batches(split, batch_size: int, process_index: int = 0,
                 process_count: int = 1, threads: int = 0
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yields (images, labels, mask) covering every example exactly once.

  The last batch is padded to `batch_size` with zeros and masked out, so that
  every batch has the same shape (one compilation) and nothing is dropped.
  With several processes each gets (and reads) its contiguous slice of every
  global batch.
  """
  n = len(split)
  local = batch_size // process_count
  lo = process_index * local

  def batch_indices(i):
    start = i * batch_size + lo
    return np.arange(start, min(start + local, n))

  for images, labels in _read_batches(split, batch_indices,
                                      -(-n // batch_size), threads):
    mask = np.ones(local, bool)
    valid = len(labels)
    if valid < local:
      pad = local - valid
      images = np.concatenate(
          [images, np.zeros((pad,) + images.shape[1:], np.uint8)])
      labels = np.concatenate([labels, np.zeros(pad, np.int32)])
      mask[valid:] = False
    yield images, labels, mask


def prefetch(batches: Iterator[tuple], put: Callable[..., tuple],
             size: int = 2) -> Iterator[tuple]:
  """put(*batch) for each batch, `size` batches ahead of the consumer (0:
  each put just before it is used).

  `put` starts an asynchronous transfer to the devices, so the next batches
  travel while the current step runs. (flax.jax_utils.prefetch_to_device
  does this for pmap layouts; ours go through a Mesh's shardings.)
  """
  queue = collections.deque()
  for batch in batches:
    queue.append(put(*batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def device_train_batches(split, batch_size: int, seed: int, start_step: int,
                         num_steps: int, mesh, *, prefetch_batches: int = 2,
                         on_device: bool = False,
                         balanced_labels=None) -> Iterator[tuple]:
  """(images, labels) on the mesh's devices for steps [start, start + num).

  From the host with `prefetch_batches` transfers ahead, or, with
  `on_device`, gathered on the devices from a copy of the training set there
  (the same indices, so the same batches).

  Args:
    split: the training split.
    batch_size, seed, start_step, num_steps: as train_batches.
    mesh: a distributed.Mesh.
    prefetch_batches: host batches sent ahead of the step.
    on_device: keep the set on the devices (one process, in memory).
    balanced_labels: as train_batches.
  """
  if on_device:
    # Checked here, not when the first batch is drawn, so that the run is
    # refused before it touches its workdir.
    if not data_sources.in_memory(split):
      raise data_sources.DataError(
          'data_on_device needs the training set in memory; set '
          '--config.data_loading=memory or data_on_device=false')
    return _gather_on_device(split, batch_size, seed, start_step, num_steps,
                             mesh, balanced_labels)
  batches = train_batches(split, batch_size, seed, start_step, num_steps,
                          jax.process_index(), jax.process_count(),
                          threads=READ_THREADS,
                          balanced_labels=balanced_labels)
  return prefetch(batches, mesh.put_batch, prefetch_batches)


def _gather_on_device(split, batch_size: int, seed: int, start_step: int,
                      num_steps: int, mesh, balanced_labels=None):
  images = jax.device_put(split.images, mesh.replicated)
  labels = jax.device_put(split.labels, mesh.replicated)
  logging.info('Training set on the devices: %.1f MB of uint8 images',
               split.images.nbytes / 1e6)
  gather = jax.jit(lambda x, y, i: (x[i], y[i]),
                   out_shardings=(mesh.batch, mesh.batch))
  # Indices only: the host's work per step is a slice of a permutation.
  indices = train_batch_indices(len(split), batch_size, seed, start_step,
                                balanced_labels=balanced_labels)
  for i in range(num_steps):
    yield gather(images, labels, jax.device_put(indices(i), mesh.batch))
