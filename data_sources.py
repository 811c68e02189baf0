"""Where the examples come from: IDX folders, image folders and tfds sets.

Three sources, one output format, chosen by `source_kind(data_dir)`:
  * a folder holding the four MNIST-format IDX files (raw or `.gz`), read
    directly with `read_idx`, for machines without network;
  * an image folder, `data_dir/{train,test[,validation]}/<class>/<image>`,
    or a flat one, `data_dir/<class>/<image>` (image_folder.py lists, checks,
    splits and decodes it);
  * any tensorflow-datasets image-classification set with `image` and
    `label` features and `train`/`test` splits.

Every split, whatever its source, offers len(), get(indices) -> (uint8
images (N, H, W, C), int32 labels), image_shape and checksum(crc); one held
in memory is a `Split`, the fastest route. `load_dataset` also carves a
validation hold-out when asked, and `fingerprint` identifies the data for a
resume. In a run of several processes, process 0 alone downloads and
prepares a tfds set while the others wait for it (`load_dataset` with
`processes`).
"""

import dataclasses
import gzip
import os
import socket
import struct
import zlib
from typing import Any, Optional, Sequence

import numpy as np

import image_folder

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


# `loading='auto'` holds a dataset in memory up to this many bytes of uint8
# images (per process), and reads it by random access beyond.
MEMORY_BUDGET_BYTES = 4 << 30
LOADINGS = ('auto', 'memory', 'stream')
# Examples read per call when a tfds set is loaded whole.
_LOAD_CHUNK = 8192
# What data_dir may be; every error about an unusable data_dir names them.
LAYOUTS = ('DATA/train/<class>/<image> with DATA/test/<class>/<image>; '
           'DATA/<class>/<image> (test_fraction of each class is the test '
           'set); the four MNIST-format IDX files; or a tfds data_dir '
           'holding the prepared set')


class DataError(ValueError):
  """Data that is missing or malformed; the message names what and where."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset, held in memory: the fastest route.

  The other split types (image_folder.FolderSplit, TfdsSplit, Subset) offer
  the same interface: len(), get(indices) -> (uint8 images, int32 labels),
  image_shape and checksum(crc).
  """
  # uint8, (N, H, W, C): a quarter of float32's memory and transfer; the
  # jitted steps scale to [0, 1] (augmentation.to_float).
  images: np.ndarray
  labels: np.ndarray  # int32, (N,).
  # The split this one was decoded from, if any: it names the data.
  origin: Any = None

  def __len__(self):
    return len(self.labels)

  @property
  def image_shape(self) -> tuple[int, ...]:
    """The model's input shape; images may be stored larger (an image
    folder's train split for rrc: image_folder.FolderSplit.stored_size)."""
    if self.origin is not None:
      return tuple(self.origin.image_shape)
    return tuple(self.images.shape[1:])

  def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
    return self.images[indices], self.labels[indices]

  def checksum(self, crc: int = 0) -> int:
    if self.origin is not None:
      return self.origin.checksum(crc)
    return zlib.crc32(self.labels.tobytes(), crc)


@dataclasses.dataclass(frozen=True)
class Subset:
  """The examples `indices` of another split (e.g. a carved hold-out)."""
  base: Any
  indices: np.ndarray

  def __len__(self):
    return len(self.indices)

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.base.image_shape)

  def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
    return self.base.get(self.indices[indices])

  def checksum(self, crc: int = 0) -> int:
    return zlib.crc32(self.indices.astype(np.int64).tobytes(),
                      self.base.checksum(crc))


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
  """A prepared tfds split read by random access (ArrayRecord files)."""
  source: Any  # tfds ArrayRecordDataSource: len() and __getitems__.
  image_shape: tuple[int, ...]
  identity: str  # name, version and split: checksummed instead of labels.

  def __len__(self):
    return len(self.source)

  def get(self, indices) -> tuple[np.ndarray, np.ndarray]:
    if not len(indices):
      return (np.zeros((0,) + tuple(self.image_shape), np.uint8),
              np.zeros(0, np.int32))
    examples = self.source.__getitems__([int(i) for i in indices])
    images = np.stack([e['image'] for e in examples]).astype(np.uint8)
    return images, np.asarray([e['label'] for e in examples], np.int32)

  def checksum(self, crc: int = 0) -> int:
    return zlib.crc32(self.identity.encode(), crc)


@dataclasses.dataclass(frozen=True)
class Dataset:
  train: Any  # Any split type above.
  test: Any
  num_classes: int
  class_names: Sequence[str]
  source: str  # Human-readable description of where the data came from.
  # Held out from training to choose the best checkpoint; None if none.
  validation: Any = None

  def eval_splits(self) -> dict:
    """The splits evaluated each epoch, by name: validation (if any), test."""
    if self.validation is None:
      return {'test': self.test}
    return {'validation': self.validation, 'test': self.test}

  @property
  def selection_split(self) -> str:
    """The split the best checkpoint is chosen on: never test if there is a
    validation split."""
    return 'test' if self.validation is None else 'validation'


def labels_of(split) -> np.ndarray:
  """Every label of a split, in order (a tfds split reads its examples)."""
  if isinstance(split, Subset):
    return labels_of(split.base)[split.indices]
  if hasattr(split, 'labels'):
    return np.asarray(split.labels)
  return np.concatenate([split.get(np.arange(i, min(i + 1024, len(split))))[1]
                         for i in range(0, len(split), 1024)] or [
                             np.zeros(0, np.int32)])


def in_memory(split) -> bool:
  return isinstance(split, Split)


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
  if not len(images):
    raise DataError(f'{paths[0]} holds no images; accepted: IDX files with at '
                    f'least one example per split')
  return Split(images=images[..., None], labels=labels.astype(np.int32))


def source_kind(data_dir: str) -> str:
  """Which source `data_dir` is: 'idx', 'folder' (train/ and test/), 'flat'
  (a flat class folder) or 'tfds' (tfds's default folder when empty, else
  its data_dir); the one place that decides."""
  if data_dir and os.path.isdir(data_dir):
    if is_idx_dir(data_dir):
      return 'idx'
    try:
      layout = image_folder.folder_layout(data_dir)
    except image_folder.BadImagesError as e:  # An unreadable folder.
      raise DataError(str(e)) from e
    if layout:
      return 'flat' if layout == 'flat' else 'folder'
  return 'tfds'


def _no_layout(data_dir: str, why: str) -> DataError:
  return DataError(f'data_dir {data_dir} is none of the accepted layouts '
                   f'({image_folder.layout_hint(data_dir)}; {why}); '
                   f'accepted: {LAYOUTS}')


def _tfds_builder(name: str, data_dir: Optional[str]):
  import tensorflow_datasets as tfds  # Heavy import; only this route needs it.
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    if data_dir:
      raise _no_layout(data_dir, f'no IDX files; dataset {name!r} is not a '
                       f'tensorflow-datasets name') from e
    raise DataError(
        f'unknown dataset {name!r}: not a tensorflow-datasets name (try '
        f'mnist, fashion_mnist, kmnist, cifar10), or set --config.data_dir; '
        f'accepted: {LAYOUTS}') from e


def _network_reachable(host: str, port: int = 443, timeout: float = 5.0):
  try:
    socket.create_connection((host, port), timeout=timeout).close()
    return True
  except OSError:
    return False


def _prepare(builder, name: str, data_dir: Optional[str]):
  """Downloads and prepares a tfds set if it is not prepared yet; only into
  tfds's default folder (data_dir None): a given data_dir must hold it."""
  if builder.is_prepared():
    return
  # Under tfds.testing.mock_data (the Flax examples' test pattern)
  # download_and_prepare is a stand-in that downloads nothing.
  mocked = type(builder).download_and_prepare.__module__.startswith(
      'tensorflow_datasets.testing')
  if data_dir and not mocked:
    # Most often a folder of the user's own data in a layout not accepted:
    # saying so helps more than a download into it.
    raise _no_layout(data_dir, f'no IDX files; tfds set {name!r} is not '
                     f'prepared in it: `tfds build {name} --data_dir=DIR` '
                     f'prepares it')
  # tfds would otherwise retry downloads for minutes on an offline machine.
  if not mocked and not _network_reachable('storage.googleapis.com'):
    raise DataError(
        f'dataset {name!r} is not prepared in {builder.data_dir} and the '
        f'network is unreachable, so tfds cannot download it. Offline '
        f'route: set --config.data_dir to a folder of MNIST-format IDX '
        f'files, e.g. --config=configs/fashion_mnist.py after '
        f'`apt-get install dataset-fashion-mnist`')
  builder.download_and_prepare()


def _prepared_builder(name: str, data_dir: Optional[str],
                      processes: image_folder.Processes):
  """The tfds builder, built once per process, after process 0 prepared the
  set (the others wait for it; if it fails, all stop with its reason).

  A builder made before the set is prepared would not see its metadata, so
  the other processes make theirs only once process 0 is done.
  """
  if processes.count == 1:
    builder = _tfds_builder(name, data_dir)
    _prepare(builder, name, data_dir)
    return builder
  builder, error = None, None
  if processes.index == 0:
    try:
      builder = _tfds_builder(name, data_dir)
      _prepare(builder, name, data_dir)
    except Exception as e:  # pylint: disable=broad-except
      # Any failure, not only the expected kind, is told to the others, who
      # would otherwise wait for it until the heartbeat timeout.
      error = e
  prepared = np.asarray(processes.allgather(np.int32(error is None)))
  if error is not None:
    raise error
  if not prepared.reshape(-1)[0]:
    raise DataError(f'process 0 could not prepare dataset {name!r}; see its '
                    f'log')
  return builder or _tfds_builder(name, data_dir)


def _fits_memory(num_images: int, image_shape) -> bool:
  return num_images * int(np.prod(image_shape)) <= MEMORY_BUDGET_BYTES


def load_tfds(name: str, data_dir: Optional[str], loading: str = 'auto',
              processes: image_folder.Processes = image_folder.Processes()
              ) -> Dataset:
  """Loads the train and test (and validation, if any) splits of a tfds set.

  In memory when `loading` is 'memory', or 'auto' and the images fit
  MEMORY_BUDGET_BYTES; otherwise read by random access from the prepared
  ArrayRecord files (tfds `data_source`), decoding only the examples asked
  for. Process 0 of `processes` prepares the set first.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _prepared_builder(name, data_dir, processes)
  features = builder.info.features
  for key in ('image', 'label'):
    if key not in features:
      raise DataError(f'dataset {name!r} has no {key!r} feature; need an '
                      f'image-classification set with image and label')
  known = builder.info.splits  # Empty only under tfds.testing.mock_data.
  for split in ('train', 'test'):
    if known and split not in known:
      raise DataError(f'dataset {name!r} has no {split!r} split; has '
                      f'{sorted(known)}')
  names = [s for s in ('train', 'test', 'validation') if s in known
           or (not known and s != 'validation')]
  shape = tuple(features['image'].shape)
  stream = loading == 'stream' or (
      loading == 'auto' and known and None not in shape and not _fits_memory(
          sum(known[s].num_examples for s in names), shape))
  random_access = builder.info.file_format == (
      tfds.core.file_adapters.FileFormat.ARRAY_RECORD)
  if stream and not random_access:
    raise DataError(
        f'dataset {name!r} in {builder.data_dir} is stored as '
        f'{builder.info.file_format}, which cannot be read by random access; '
        f'prepare it as ArrayRecord (tfds build {name} '
        f'--file_format=array_record) or set --config.data_loading=memory')
  if random_access:
    if None in shape:
      raise DataError(f'dataset {name!r} has images of varying size '
                      f'{shape}; reading it needs one fixed size')
    splits = {split: TfdsSplit(builder.as_data_source(split), shape,
                               f'{name}:{builder.info.version}:{split}')
              for split in names}
    if stream:
      return _tfds_dataset(builder, name, splits, 'streamed')
    # ArrayRecord files are read through the same random access (tf.data
    # cannot read them), here whole.
    for split, source in splits.items():
      images, labels = zip(*(source.get(np.arange(
          i, min(i + _LOAD_CHUNK, len(source))))
                             for i in range(0, len(source), _LOAD_CHUNK)))
      splits[split] = Split(np.concatenate(images), np.concatenate(labels),
                            origin=source)
    return _tfds_dataset(builder, name, splits, 'in memory')
  splits = {}
  for split in names:
    # Large batches rather than batch_size=-1, which needs split sizes from
    # metadata that mock_data does not provide.
    chunks = list(tfds.as_numpy(builder.as_dataset(split=split).batch(
        _LOAD_CHUNK)))
    if not chunks:
      raise DataError(f'split {split!r} of dataset {name!r} is empty')
    splits[split] = Split(
        images=np.concatenate([c['image'] for c in chunks]).astype(np.uint8),
        labels=np.concatenate([c['label'] for c in chunks]).astype(np.int32))
  return _tfds_dataset(builder, name, splits, 'in memory')


def _tfds_dataset(builder, name, splits, how) -> Dataset:
  label = builder.info.features['label']
  return Dataset(train=splits['train'], test=splits['test'],
                 validation=splits.get('validation'),
                 num_classes=label.num_classes, class_names=list(label.names),
                 source=f'tfds:{name} ({builder.data_dir}, {how})')


def load_image_folder(
    data_dir: str, *, image_size: int, channels: int, skip_bad_images: bool,
    loading: str, test_fraction: float, split_seed: int,
    processes: image_folder.Processes = image_folder.Processes(),
    crop_pct: float = 1.0, interpolation: str = 'bilinear',
    train_crop_pct: float = 1.0) -> Dataset:
  """An image folder, split or flat (see image_folder.py), in memory if it
  fits."""
  try:
    folders, class_names = image_folder.scan(
        data_dir, image_size, channels, skip_bad_images, test_fraction,
        split_seed, processes, crop_pct, interpolation, train_crop_pct)
  except image_folder.BadImagesError as e:
    raise DataError(str(e)) from e
  total = sum(len(s) for s in folders.values())
  shape = folders['train'].stored_shape
  if loading == 'memory' or (loading == 'auto' and _fits_memory(total, shape)):
    progress = image_folder.Progress(
        f'Decoding images under {data_dir} into memory as {shape} '
        f'({total * int(np.prod(shape)) / 2**20:.1f} MiB)', total)
    try:
      splits = {k: Split(image_folder.decode_all(s, progress), s.labels,
                         origin=s) for k, s in folders.items()}
    except image_folder.BadImagesError as e:
      raise DataError(str(e)) from e
    how = f'decoded into memory in {progress.finish():.1f} s'
  else:
    splits, how = folders, 'decoded per batch'
  if source_kind(data_dir) == 'flat':
    source = (f'flat folder:{data_dir} (test: {test_fraction:g} of each '
              f'class, drawn by split_seed {split_seed}; {how})')
  else:
    source = f'folder:{data_dir} ({how})'
  return Dataset(train=splits['train'], test=splits['test'],
                 validation=splits.get('validation'),
                 num_classes=len(class_names), class_names=class_names,
                 source=source)


def load_dataset(name: str, data_dir: str = '', *, image_size: int = 0,
                 channels: int = 0, skip_bad_images: bool = False,
                 loading: str = 'auto', validation_fraction: float = 0.0,
                 test_fraction: float = 0.2, split_seed: int = 0,
                 processes: image_folder.Processes = image_folder.Processes(),
                 crop_pct: float = 1.0, interpolation: str = 'bilinear',
                 train_crop_pct: float = 1.0) -> Dataset:
  """Loads a dataset by the rules of the data keys of the config.

  Every process of a run calls it, and gets the same examples in the same
  order on every run.

  Args:
    name: a tfds name; also picks class names for IDX folders; unused for
      image folders.
    data_dir: '' for tfds's default folder; a folder of MNIST-format IDX
      files, read directly; an image folder (train/<class>/<image>, ...) or a
      flat one (<class>/<image>); any other existing folder is tfds's
      data_dir, which must hold the prepared set (source_kind).
    image_size: image folders: resize to this square size (0: the size most
      images have).
    channels: image folders: 1 or 3 (0: from the first training image).
    skip_bad_images: image folders: leave unreadable files out.
    loading: auto, memory or stream (see load_tfds; IDX: always memory).
    validation_fraction: hold out this fraction of the training examples as
      the validation split (drawn by `split_seed`); 0 for none.
    test_fraction: flat image folders: the share of each class held out as
      the test split (drawn by `split_seed`); unused by the other sources.
    split_seed: draws the held-out examples, apart from the training seed,
      so runs of different seeds are compared on the same examples.
    crop_pct, interpolation: image folders: how images are resized
      (image_folder.decode_image).
    train_crop_pct: image folders: below 1, the train split is kept larger
      for rrc (image_folder.scan; `train_crop_pct`).
    processes: the processes of the run: an image folder's files are decoded
      by all of them, each its share; a tfds set is prepared by process 0.

  Returns:
    The splits; `validation` is None without a validation split.
  """
  if data_dir and not os.path.isdir(data_dir):
    raise DataError(f'data_dir {data_dir!r} does not exist; accepted: '
                    f'{LAYOUTS}')
  kind = source_kind(data_dir)
  if kind == 'idx':
    dataset = load_idx(name, data_dir)
  elif kind in ('folder', 'flat'):
    dataset = load_image_folder(
        data_dir, image_size=image_size, channels=channels,
        skip_bad_images=skip_bad_images, loading=loading,
        test_fraction=test_fraction, split_seed=split_seed,
        processes=processes, crop_pct=crop_pct, interpolation=interpolation,
        train_crop_pct=train_crop_pct)
  else:
    dataset = load_tfds(name, data_dir or None, loading, processes)
  if validation_fraction:
    if dataset.validation is not None:
      raise DataError(f'{dataset.source} has a validation split already; '
                      f'set validation_fraction to 0 to use it (got '
                      f'{validation_fraction})')
    train, validation = carve_validation(dataset.train, validation_fraction,
                                         split_seed)
    dataset = dataclasses.replace(dataset, train=train,
                                  validation=validation)
  return dataset


def dataset_options(config) -> dict:
  """The config's data keys as load_dataset's keyword arguments (all but
  `processes`): training, eval and predict load data by the same rules."""
  return dict(name=config.dataset, data_dir=config.data_dir,
              image_size=config.image_size, channels=config.channels,
              skip_bad_images=config.skip_bad_images,
              loading=config.data_loading,
              validation_fraction=config.validation_fraction,
              test_fraction=config.test_fraction,
              split_seed=config.split_seed, crop_pct=config.eval_crop_pct,
              interpolation=config.interpolation,
              train_crop_pct=train_crop_pct(config))


def train_crop_pct(config) -> float:
  """eval_crop_pct when `rrc` crops the training images of an image folder
  resized to a square image_size (they are then kept larger, for it to crop
  from more pixels: image_folder.scan), else 1."""
  steps = [s.strip() for s in config.augment.split(',')]
  if 'rrc' in steps and config.image_size and config.eval_crop_pct < 1:
    return config.eval_crop_pct
  return 1.0


def load_idx(name: str, data_dir: str) -> Dataset:
  """The train and test splits of a folder of MNIST-format IDX files."""
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


def carve_validation(split, fraction: float, seed: int):
  """(train, validation): a held-out `fraction` of `split`, picked by `seed`
  (the config's split_seed).

  Disjoint, together all of `split`, each in the original order; the same
  for the same (seed, size). An in-memory split stays in memory (copied).
  """
  n = len(split)
  count = int(round(fraction * n))
  if not 0 < count < n:
    raise DataError(f'validation_fraction {fraction} of {n} training '
                    f'examples leaves {count} for validation; accepted: a '
                    f'fraction that holds out at least 1 and keeps at least '
                    f'1 for training')
  # Another stream than the epoch orders (epoch_permutation), so the
  # hold-out does not line up with any epoch's batches.
  order = np.random.Generator(np.random.PCG64([seed, 2**31 - 1])).permutation(n)
  held = np.sort(order[:count])
  kept = np.sort(order[count:])
  if isinstance(split, Split):
    return tuple(Split(split.images[i], split.labels[i], origin=None if (
        split.origin is None) else Subset(split.origin, i)) for i in (kept,
                                                                        held))
  return Subset(split, kept), Subset(split, held)


def fingerprint(dataset: Dataset) -> dict:
  """A short identity of the data: sizes, image shape, class names and a
  checksum of the labels (and, for files, their names). Equal fingerprints
  mean the same examples in the same order, for all a resumed run can tell
  (checking every pixel would cost a pass over the data at each start)."""
  crc = dataset.test.checksum(dataset.train.checksum())
  result = {'train_examples': len(dataset.train),
            'test_examples': len(dataset.test),
            'image_shape': list(dataset.train.image_shape),
            'class_names': list(dataset.class_names), 'labels_crc32': crc}
  if dataset.validation is not None:
    result['validation_examples'] = len(dataset.validation)
    result['labels_crc32'] = dataset.validation.checksum(crc)
  return result


