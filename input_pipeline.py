"""Loads image-classification data into memory and cuts it into batches.

Two sources, one output format:
  * a folder holding the four MNIST-format IDX files (raw or `.gz`), read
    directly with `read_idx`, for machines without network;
  * any tensorflow-datasets image-classification set with `image` and `label`
    features and `train`/`test` splits.

Either way a split becomes a `Split`: uint8 images of shape (N, H, W, C)
and int32 labels, held in host memory. Training batches are
taken from a permutation that depends only on (seed, epoch), so the batch of
any step can be recomputed after a restart; evaluation batches cover every
example exactly once, the last one padded and masked.
"""

import dataclasses
import gzip
import os
import socket
import struct
import zlib
from typing import Iterator, Optional, Sequence

import numpy as np

# File names of the MNIST distribution, per split. `.gz` variants are accepted.
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}

# IDX magic numbers: two zero bytes, a type code (0x08 = unsigned byte) and the
# number of dimensions.
_IDX_UBYTE = 0x08
_IDX_IMAGES_NDIM = 3
_IDX_LABELS_NDIM = 1

# Class names for the IDX-only route, where tfds metadata is not at hand.
CLASS_NAMES = {
    'mnist': [str(i) for i in range(10)],
    'fashion_mnist': [
        'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
        'Shirt', 'Sneaker', 'Bag', 'Ankle boot'
    ],
    'kmnist': ['o', 'ki', 'su', 'tsu', 'na', 'ha', 'ma', 'ya', 're', 'wo'],
}


class DataError(ValueError):
  """Data that is missing or malformed; the message names what and where."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset, held in memory."""
  # uint8, (N, H, W, C): a quarter of float32's memory and transfer; the
  # jitted steps scale to [0, 1] (augmentation.to_float).
  images: np.ndarray
  labels: np.ndarray  # int32, (N,).

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  train: Split
  test: Split
  num_classes: int
  class_names: Sequence[str]
  source: str  # Human-readable description of where the data came from.


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file of unsigned bytes (optionally gzip-compressed).

  Args:
    path: the file; a name ending in `.gz` is decompressed.

  Returns:
    A uint8 array with the shape the file's header declares.

  Raises:
    DataError: when the file is not a valid unsigned-byte IDX file.
  """
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError) as e:  # gzip raises these for corrupt streams.
    raise DataError(f'cannot read IDX file {path}: {e}') from e
  if len(data) < 4:
    raise DataError(f'{path}: not an IDX file (only {len(data)} bytes)')
  zero, dtype_code, ndim = struct.unpack('>HBB', data[:4])
  if zero != 0 or dtype_code != _IDX_UBYTE or ndim == 0:
    raise DataError(
        f'{path}: bad IDX magic number 0x{data[:4].hex()}; expected 0x0000'
        f'08NN (unsigned bytes, NN dimensions)')
  header_len = 4 + 4 * ndim
  if len(data) < header_len:
    raise DataError(f'{path}: IDX header truncated')
  shape = struct.unpack(f'>{ndim}I', data[4:header_len])
  expected = int(np.prod(shape, dtype=np.int64))
  payload = len(data) - header_len
  if payload != expected:
    raise DataError(
        f'{path}: header declares shape {shape} ({expected} bytes) but the '
        f'file holds {payload} bytes of data')
  return np.frombuffer(data, np.uint8, offset=header_len).reshape(shape)


def find_idx_file(data_dir: str, name: str) -> Optional[str]:
  """Returns the path of IDX file `name` (raw or `.gz`) in data_dir, or None."""
  for candidate in (name, name + '.gz'):
    path = os.path.join(data_dir, candidate)
    if os.path.isfile(path):
      return path
  return None


def is_idx_dir(data_dir: str) -> bool:
  """True if data_dir holds at least one of the MNIST IDX files."""
  names = [n for pair in IDX_FILES.values() for n in pair]
  return any(find_idx_file(data_dir, n) for n in names)


def load_idx_split(data_dir: str, split: str) -> Split:
  """Reads one split ('train' or 'test') from a folder of IDX files."""
  images_name, labels_name = IDX_FILES[split]
  paths = []
  for name in (images_name, labels_name):
    path = find_idx_file(data_dir, name)
    if path is None:
      raise DataError(f'data_dir {data_dir} is missing {name} (or {name}.gz); '
                      f'an IDX folder needs all of: ' + ', '.join(
                          n for pair in IDX_FILES.values() for n in pair))
    paths.append(path)
  images, labels = read_idx(paths[0]), read_idx(paths[1])
  if images.ndim != _IDX_IMAGES_NDIM:
    raise DataError(f'{paths[0]}: images must have 3 dimensions (N, H, W), '
                    f'got shape {images.shape}')
  if labels.ndim != _IDX_LABELS_NDIM:
    raise DataError(f'{paths[1]}: labels must have 1 dimension, got shape '
                    f'{labels.shape}')
  if len(images) != len(labels):
    raise DataError(f'{paths[0]} holds {len(images)} images but {paths[1]} '
                    f'holds {len(labels)} labels')
  return Split(images=images[..., None], labels=labels.astype(np.int32))


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 in [0, 1]."""
  return images.astype(np.float32) / np.float32(255.0)


def _tfds_builder(name: str, data_dir: Optional[str]):
  import tensorflow_datasets as tfds  # Heavy import; only this route needs it.
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(
        f'unknown dataset {name!r}: not a tensorflow-datasets name (try '
        f'mnist, fashion_mnist, kmnist, cifar10), or point data_dir at a '
        f'folder of MNIST-format IDX files') from e


def _network_reachable(host: str, port: int = 443, timeout: float = 5.0):
  try:
    socket.create_connection((host, port), timeout=timeout).close()
    return True
  except OSError:
    return False


def prepare_dataset(name: str, data_dir: str = ''):
  """Downloads and prepares a tfds set if it is not prepared yet.

  Nothing to do for an IDX folder. In a multi-process run only process 0
  calls this (see train.load_dataset); the others then just read.
  """
  if data_dir and os.path.isdir(data_dir) and is_idx_dir(data_dir):
    return
  builder = _tfds_builder(name, data_dir or None)
  if not builder.is_prepared():
    # tfds would otherwise retry downloads for minutes on an offline machine.
    # Under tfds.testing.mock_data (the Flax examples' test pattern)
    # download_and_prepare is a stand-in that downloads nothing.
    mocked = type(builder).download_and_prepare.__module__.startswith(
        'tensorflow_datasets.testing')
    if not mocked and not _network_reachable('storage.googleapis.com'):
      raise DataError(
          f'dataset {name!r} is not prepared in {builder.data_dir} and the '
          f'network is unreachable, so tfds cannot download it. Offline '
          f'route: set --config.data_dir to a folder of MNIST-format IDX '
          f'files, e.g. --config=configs/fashion_mnist.py after '
          f'`apt-get install dataset-fashion-mnist`')
    builder.download_and_prepare()


def load_tfds(name: str, data_dir: Optional[str]) -> Dataset:
  """Loads the train and test splits of a tfds dataset whole into memory."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  prepare_dataset(name, data_dir or '')
  builder = _tfds_builder(name, data_dir)
  features = builder.info.features
  for key in ('image', 'label'):
    if key not in features:
      raise DataError(f'dataset {name!r} has no {key!r} feature; need an '
                      f'image-classification set with image and label')
  splits = {}
  for split in ('train', 'test'):
    # Splits are unknown (empty) only under tfds.testing.mock_data.
    if builder.info.splits and split not in builder.info.splits:
      raise DataError(f'dataset {name!r} has no {split!r} split; has '
                      f'{sorted(builder.info.splits)}')
    # Large batches rather than batch_size=-1, which needs split sizes from
    # metadata that mock_data does not provide.
    chunks = list(tfds.as_numpy(builder.as_dataset(split=split).batch(8192)))
    if not chunks:
      raise DataError(f'split {split!r} of dataset {name!r} is empty')
    splits[split] = Split(
        images=np.concatenate([c['image'] for c in chunks]).astype(np.uint8),
        labels=np.concatenate([c['label'] for c in chunks]).astype(np.int32))
  label = features['label']
  return Dataset(train=splits['train'], test=splits['test'],
                 num_classes=label.num_classes, class_names=list(label.names),
                 source=f'tfds:{name} ({builder.data_dir})')


def load_dataset(name: str, data_dir: str = '') -> Dataset:
  """Loads a dataset by the rules of the `dataset`/`data_dir` config keys.

  Args:
    name: a tfds name; also picks class names for IDX folders.
    data_dir: '' for tfds's default folder; a folder of MNIST-format IDX
      files, read directly; any other existing folder is tfds's data_dir.

  Returns:
    The train and test splits in memory.
  """
  if data_dir:
    if not os.path.isdir(data_dir):
      raise DataError(f'data_dir {data_dir!r} does not exist; give a folder '
                      f'of MNIST-format IDX files or a tfds data_dir')
    if is_idx_dir(data_dir):
      train = load_idx_split(data_dir, 'train')
      test = load_idx_split(data_dir, 'test')
      if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(f'{data_dir}: train images are '
                        f'{train.images.shape[1:]} but test images are '
                        f'{test.images.shape[1:]}')
      num_classes = int(max(train.labels.max(), test.labels.max())) + 1
      names = CLASS_NAMES.get(name, [str(i) for i in range(num_classes)])
      if len(names) < num_classes:
        raise DataError(
            f'{data_dir}: labels go up to {num_classes - 1}, but dataset '
            f'{name!r} has {len(names)} classes (labels 0..{len(names) - 1}); '
            f'fix the label files or set --config.dataset to a name without '
            f'fixed classes (e.g. custom)')
      return Dataset(train=train, test=test, num_classes=num_classes,
                     class_names=names, source=f'idx:{data_dir}')
  return load_tfds(name, data_dir or None)


def fingerprint(dataset: Dataset) -> dict:
  """A short identity of the data: sizes, image shape, class names and a
  checksum of the labels. Equal fingerprints mean the same examples in the
  same order, for all a resumed run can tell (checking every pixel would
  cost a pass over the data at each start)."""
  crc = zlib.crc32(dataset.test.labels.tobytes(),
                   zlib.crc32(dataset.train.labels.tobytes()))
  return {'train_examples': len(dataset.train),
          'test_examples': len(dataset.test),
          'image_shape': list(dataset.train.images.shape[1:]),
          'class_names': list(dataset.class_names), 'labels_crc32': crc}


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The training order of one epoch; depends only on (seed, epoch)."""
  rng = np.random.Generator(np.random.PCG64([seed, epoch]))
  return rng.permutation(num_examples)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Number of full training batches per epoch (the remainder is dropped)."""
  return num_examples // batch_size


def train_batch_indices(num_examples: int, batch_size: int, seed: int,
                        step: int) -> np.ndarray:
  """Indices of the global training batch of `step` (counting from 0)."""
  per_epoch = steps_per_epoch(num_examples, batch_size)
  epoch, index = divmod(step, per_epoch)
  perm = epoch_permutation(num_examples, seed, epoch)
  return perm[index * batch_size:(index + 1) * batch_size]


def train_batches(split: Split, batch_size: int, seed: int, start_step: int,
                  num_steps: int, process_index: int = 0,
                  process_count: int = 1
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (images, labels) training batches for steps [start, start+num).

  Args:
    split: the training split.
    batch_size: examples per global batch (over all processes).
    seed: data-order seed.
    start_step: the first step to produce, e.g. a restored step.
    num_steps: how many batches to produce.
    process_index: this process; it gets its contiguous slice of each global
      batch, so the global batch is the same whatever the process count.
    process_count: number of processes; must divide batch_size.
  """
  n = len(split)
  per_epoch = steps_per_epoch(n, batch_size)
  if per_epoch == 0:
    raise ValueError(f'batch_size {batch_size} is larger than the training '
                     f'set ({n} examples)')
  local = batch_size // process_count
  lo = process_index * local
  epoch, perm = None, None
  for step in range(start_step, start_step + num_steps):
    e, i = divmod(step, per_epoch)
    if e != epoch:
      epoch, perm = e, epoch_permutation(n, seed, e)
    idx = perm[i * batch_size + lo:i * batch_size + lo + local]
    yield split.images[idx], split.labels[idx]


def eval_batches(split: Split, batch_size: int, process_index: int = 0,
                 process_count: int = 1
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yields (images, labels, mask) covering every example exactly once.

  The last batch is padded to `batch_size` with zeros and masked out, so that
  every batch has the same shape (one compilation) and nothing is dropped.
  With several processes each gets its contiguous slice of every global batch.
  """
  n = len(split)
  local = batch_size // process_count
  lo = process_index * local
  for start in range(0, n, batch_size):
    images = split.images[start:start + batch_size]
    labels = split.labels[start:start + batch_size]
    valid = len(labels)
    mask = np.ones(batch_size, bool)
    if valid < batch_size:
      pad = batch_size - valid
      images = np.concatenate(
          [images, np.zeros((pad,) + images.shape[1:], images.dtype)])
      labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
      mask[valid:] = False
    yield images[lo:lo + local], labels[lo:lo + local], mask[lo:lo + local]
