"""Image folders: `data_dir/{train,test[,validation]}/<class>/<image>`.

The most common layout of a user's own data. Class names are the folder
names under `train/`, sorted; label i is the i-th name. Every image is
converted the same way (`decode_image`): to grayscale or RGB by `channels`
and resized to `image_size`, by PIL, with the same rules predict uses for
single files.

Every file is opened once before training (`scan`), in parallel threads and,
with several processes, each process opening its share, so an unreadable
one is named before the first step, never mid-epoch. A
`FolderSplit` then decodes the images of each batch when asked for them; the
data sources (data_sources.py) may instead decode a split once into memory
when it fits.
"""

import concurrent.futures
import dataclasses
import os
import time
import zlib
from typing import Callable, Optional, Sequence

from absl import logging
import numpy as np

SPLITS = ('train', 'test', 'validation')
# By extension; other files (README, .DS_Store, ...) are ignored and counted.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif',
                    '.tiff', '.ppm', '.pgm')
# Largest image decoded; PIL's own guard stops at about 179 MP.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
# Threads for opening and decoding files, one per core: PIL releases the GIL
# while it decodes, so photos decode in parallel (bench/benchmark.py
# --mode=input measures it); more threads than cores only add GIL
# contention.
NUM_THREADS = min(32, os.cpu_count() or 1)
_CHUNK = 4096


class BadImagesError(ValueError):
  """Files under an image folder that cannot be used as images."""


def is_image_folder(data_dir: str) -> bool:
  """True if data_dir has a `train/` folder holding at least one folder."""
  train = os.path.join(data_dir, 'train')
  return os.path.isdir(train) and any(
      e.is_dir() for e in os.scandir(train) if not e.name.startswith('.'))


def _open_checked(path: str):
  """PIL image of `path`, refusing empty and oversized files."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if os.path.getsize(path) == 0:
    raise ValueError('the file is empty')
  image = Image.open(path)
  if image.width * image.height > MAX_IMAGE_PIXELS:
    image.close()
    raise ValueError(f'{image.width}x{image.height} pixels is more than the '
                     f'{MAX_IMAGE_PIXELS:,} accepted')
  return image


def decode_image(path: str, height: int, width: int,
                 channels: int) -> np.ndarray:
  """An image file -> uint8 (height, width, channels).

  Any format PIL reads (GIF: first frame). 16- and 32-bit grey images are
  scaled to 8 bits (not clipped), transparency is dropped, colour and size
  converted.

  Raises:
    ValueError (or a PIL/OS error): the file is empty, not an image, damaged
      or over MAX_IMAGE_PIXELS.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with _open_checked(path) as image:
    if image.mode.startswith('I;16') or image.mode in ('I', 'F'):
      array = np.asarray(image, np.float64)
      top = next(t for t in (255.0, 65535.0, float(array.max()))
                 if array.max() <= t)
      image = Image.fromarray(np.uint8(np.round(array / top * 255)))
    image = image.convert('L' if channels == 1 else 'RGB')
    if image.size != (width, height):
      image = image.resize((width, height), Image.BILINEAR)
    array = np.asarray(image, np.uint8)
  return array[..., None] if channels == 1 else array


def _probe(path: str) -> tuple[int, int, int]:
  """(height, width, channels) of an image file, reading its header only."""
  with _open_checked(path) as image:
    height, width = image.height, image.width
    if image.mode == 'P':
      grey = not _palette_has_colour(image)
    else:
      grey = image.mode in ('1', 'L', 'LA', 'I', 'F') or image.mode.startswith(
          'I;')
  return height, width, 1 if grey else 3


def _palette_has_colour(image) -> bool:
  if image.mode != 'P':
    return False
  palette = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)
  return bool((palette != palette[:, :1]).any())


@dataclasses.dataclass(frozen=True)
class FolderSplit:
  """One split of an image folder: file paths and labels; decodes on demand.

  Implements the split interface of input_pipeline (len, get, image_shape,
  checksum).
  """
  paths: np.ndarray  # bytes (os.fsencode), (N,).
  labels: np.ndarray  # int32, (N,).
  image_shape: tuple[int, int, int]
  root: str  # For the checksum: paths relative to it.

  def __len__(self):
    return len(self.labels)

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width, channels = self.image_shape
    images = np.empty((len(indices),) + tuple(self.image_shape), np.uint8)
    for i, index in enumerate(indices):
      path = os.fsdecode(self.paths[index])
      try:
        images[i] = decode_image(path, height, width, channels)
      except Exception as e:  # pylint: disable=broad-except
        # The scan opened this file before training; only damage deeper in
        # the pixel data (or a change on disk since) gets here.
        raise BadImagesError(
            f'{path}: cannot decode ({first_line(e)}), though its header '
            f'was readable when the run started; remove or fix it') from e
    return images, self.labels[np.asarray(indices)]

  def checksum(self, crc: int = 0) -> int:
    """CRC of the relative paths and labels: the same files, in order."""
    prefix = len(os.fsencode(os.path.join(self.root, '')))
    for path in self.paths:
      crc = zlib.crc32(path[prefix:] + b'\n', crc)
    return zlib.crc32(self.labels.tobytes(), crc)


def first_line(e: BaseException, limit: int = 160) -> str:
  """An error's message for a one-line report: its first line, cut."""
  return (str(e).splitlines() or [type(e).__name__])[0][:limit]


def _list_split(split_dir: str, class_names: Optional[Sequence[str]]):
  """(paths, labels, ignored files, class names, empty classes) of a split."""
  found = sorted(e.name for e in os.scandir(split_dir)
                 if e.is_dir() and not e.name.startswith('.'))
  names = list(class_names) if class_names is not None else found
  unknown = sorted(set(found) - set(names))
  if unknown:
    raise BadImagesError(
        f'{split_dir} has class folders {unknown} that train/ does not '
        f'have; the classes are {names}')
  paths, labels, ignored, empty = [], [], 0, []
  for label, name in enumerate(names):
    class_dir = os.path.join(split_dir, name)
    if not os.path.isdir(class_dir):
      continue
    count = 0
    for root, dirs, files in os.walk(class_dir, followlinks=True):
      dirs.sort()
      for file in sorted(files):
        if file.startswith('.'):
          continue
        if not file.lower().endswith(IMAGE_EXTENSIONS):
          ignored += 1
          continue
        paths.append(os.path.join(root, file))
        labels.append(label)
        count += 1
    if not count:
      empty.append(name)
  return paths, np.asarray(labels, np.int32), ignored, names, empty


@dataclasses.dataclass(frozen=True)
class Processes:
  """The processes that scan a folder together: this one's index, how many
  there are, and `allgather` (array -> the arrays of all processes, stacked;
  `multihost_utils.process_allgather` in a JAX job)."""
  index: int = 0
  count: int = 1
  allgather: Optional[Callable[[np.ndarray], np.ndarray]] = None


def scan(data_dir: str, image_size: int = 0, channels: int = 0,
         skip_bad_images: bool = False, processes: Processes = Processes()
         ) -> tuple[dict[str, FolderSplit], list[str]]:
  """Lists and opens every image under data_dir's split folders.

  Args:
    data_dir: holds train/<class>/..., test/<class>/..., and optionally
      validation/<class>/...
    image_size: images are resized to image_size x image_size; 0 keeps the
      size of the first training image.
    channels: 1 (grayscale) or 3 (RGB); 0 takes it from the first training
      image.
    skip_bad_images: leave unreadable files out (counted in the log) rather
      than refuse the folder.
    processes: with several, each opens a share of the files; every one of
      them must call `scan` on the same folder.

  Returns:
    ({split name: FolderSplit}, class names).

  Raises:
    BadImagesError: naming the first unreadable files, a split without
      images, or class folders missing from train/.
  """
  listed, class_names = {}, None
  for split in SPLITS:
    split_dir = os.path.join(data_dir, split)
    if not os.path.isdir(split_dir):
      if split != 'validation':
        raise BadImagesError(f'image folder {data_dir} has no {split}/ '
                             f'folder; expected {split}/<class>/<image>')
      continue
    paths, labels, ignored, class_names, empty = _list_split(split_dir,
                                                             class_names)
    if ignored:
      logging.info('%s: ignored %d files without an image extension (%s)',
                   split_dir, ignored, ' '.join(IMAGE_EXTENSIONS))
    if empty and split == 'train':
      logging.warning('%s: class folders without images: %s (they stay '
                      'classes, with no training examples)', split_dir,
                      ', '.join(empty))
    listed[split] = (paths, labels)

  everything = [p for paths, _ in listed.values() for p in paths]
  start = time.time()
  bad = _check_all(everything, processes, data_dir)
  logging.info('Opened %d image files under %s in %.1f s%s', len(everything),
               data_dir, time.time() - start,
               f' (a share in each of {processes.count} processes)'
               if processes.count > 1 else '')
  if bad and not skip_bad_images:
    first = list(bad.items())[:3]
    raise BadImagesError(
        f'{len(bad)} unreadable image file(s) under {data_dir}: ' + '; '.join(
            f'{p} ({r})' for p, r in first) + (' ...' if len(bad) > 3 else '')
        + '. Remove them, or set --config.skip_bad_images=true to leave them '
        'out')
  if bad:
    logging.warning('Left out %d unreadable image file(s) under %s (first: '
                    '%s)', len(bad), data_dir, next(iter(bad)))
  del everything

  splits = {}
  for split, (paths, labels) in listed.items():
    keep = [i for i, p in enumerate(paths) if p not in bad]
    if not keep:
      raise BadImagesError(f'{os.path.join(data_dir, split)} holds no '
                           f'readable images')
    # One bytes array, not a list of str objects: ~60 bytes a file instead
    # of ~150, for sets of millions of files.
    splits[split] = (np.array([os.fsencode(paths[i]) for i in keep]),
                     labels[keep])
  first = _probe(os.fsdecode(splits['train'][0][0]))
  height, width = (image_size, image_size) if image_size else first[:2]
  shape = (height, width, channels or first[2])
  return {split: FolderSplit(paths=paths, labels=labels, image_shape=shape,
                             root=data_dir)
          for split, (paths, labels) in splits.items()}, class_names


def _check_all(paths: list[str], processes: Processes,
               data_dir: str) -> dict[str, str]:
  """{path: why} for each file of `paths` that does not open as an image, in
  the order of `paths`.

  With several processes each opens its share of the files and they exchange
  which ones failed: every process gets the same answer from one pass over
  the folder, not one pass per process.
  """
  index, count = processes.index, processes.count
  if count > 1:
    # The shares only add up if every process listed the same files.
    listing = np.array([len(paths), zlib.crc32(
        '\0'.join(paths).encode(errors='surrogateescape'))], np.int64)
    if len(np.unique(processes.allgather(listing), axis=0)) > 1:
      raise BadImagesError(
          f'the {count} processes list different files under {data_dir}; '
          f'every process must see the same folder')
  mine = paths[index::count]
  bad = {}
  with concurrent.futures.ThreadPoolExecutor(NUM_THREADS) as pool:
    # In chunks: Executor.map submits every item at once, and a million
    # pending futures would cost more memory than the file list.
    for lo in range(0, len(mine), _CHUNK):
      chunk = mine[lo:lo + _CHUNK]
      bad.update((p, r) for p, r in zip(chunk, pool.map(_check, chunk)) if r)
  if count == 1 or not paths:
    return bad
  failed = np.zeros(len(paths), bool)
  failed[index::count] = [p in bad for p in mine]
  failed = np.asarray(processes.allgather(failed)).any(axis=0)
  # Only which files failed is exchanged, not why: another process's reason
  # is looked up again for the first three, the ones an error names.
  everywhere = {}
  for n, i in enumerate(np.flatnonzero(failed)):
    path = paths[i]
    everywhere[path] = (bad.get(path) or (_check(path) if n < 3 else None) or
                        'unreadable in another process')
  return everywhere


def _check(path: str) -> Optional[str]:
  """None if `path` opens as an image, else why not."""
  try:
    _probe(path)
    return None
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises many types for unreadable or non-image files.
    return first_line(e)


def decode_all(split: FolderSplit) -> np.ndarray:
  """Decodes a whole split into one uint8 array, in parallel threads."""
  images = np.empty((len(split),) + tuple(split.image_shape), np.uint8)
  chunk = 256

  def fill(start):
    indices = np.arange(start, min(start + chunk, len(split)))
    images[indices] = split.get(indices)[0]

  with concurrent.futures.ThreadPoolExecutor(NUM_THREADS) as pool:
    list(pool.map(fill, range(0, len(split), chunk)))
  return images
