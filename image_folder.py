"""Image folders: the two layouts of a user's own images.

  * split: `data_dir/{train,test[,validation]}/<class>/<image>`;
  * flat: `data_dir/<class>/<image>`, from which `scan` carves the test set,
    `test_fraction` of each class, drawn by `split_seed`.

`folder_layout` is the one place that tells them apart. Class names are the
class folder names, sorted; label i is the i-th name. Every image is
converted the same way (`decode_image`): to grayscale or RGB by `channels`
and resized to `image_size`, by PIL, with the same rules predict uses for
single files.

Every file is decoded once before training (`scan`), in parallel threads
and, with several processes, each process decoding its share, so an
unreadable or damaged one is named before the first step, never mid-epoch.
A `FolderSplit` then decodes the images of each batch when asked for them;
the data sources (data_sources.py) may instead decode a split once into
memory when it fits.
"""

import concurrent.futures
import dataclasses
import hashlib
import math
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
# config.interpolation -> PIL's resampling filter.
INTERPOLATIONS = {'bilinear': 'BILINEAR', 'bicubic': 'BICUBIC'}
# The size image_size=0 picks must have both sides of at least MIN_SIDE
# pixels and at most MAX_ASPECT:1 between them; others are no training size.
MIN_SIDE = 8
MAX_ASPECT = 10
# Threads for opening and decoding files, one per core: PIL releases the GIL
# while it decodes, so photos decode in parallel (bench/benchmark.py
# --mode=input measures it); more threads than cores only add GIL
# contention.
NUM_THREADS = min(32, os.cpu_count() or 1)
# Long passes over the files log how far along they are this often.
PROGRESS_SECONDS = 10.0
_CHUNK = 4096
_CARVE_ACCEPTED = ('accepted: test_fraction in (0, 1), e.g. 0.2, with at '
                   'least one image to test and one to train in each class; '
                   'or train/ and test/ folders')


class BadImagesError(ValueError):
  """Files under an image folder that cannot be used as images."""


class Progress:
  """Log lines for a long pass over files: one at the start, one at most
  every PROGRESS_SECONDS, one at the end with the time taken."""

  def __init__(self, what: str, total: int):
    self.what, self.total, self.done = what, total, 0
    self.start = self.last = time.time()
    logging.info('%s: %d files', what, total)

  def add(self, count: int = 1):
    self.done += count
    now = time.time()
    if now - self.last >= PROGRESS_SECONDS and self.done < self.total:
      self.last, elapsed = now, now - self.start
      logging.info('%s: %d of %d files (%.0f%%) in %.0f s, about %.0f s '
                   'left', self.what, self.done, self.total,
                   100 * self.done / self.total, elapsed,
                   elapsed * (self.total - self.done) / self.done)

  def finish(self) -> float:
    """Logs the end line; returns the seconds taken."""
    seconds = time.time() - self.start
    logging.info('%s: %d files done in %.1f s', self.what, self.done, seconds)
    return seconds


def _folders(folder: str) -> list[str]:
  """The names of the non-hidden folders in `folder`, sorted."""
  try:
    return sorted(e.name for e in os.scandir(folder)
                  if e.is_dir() and not e.name.startswith('.'))
  except OSError as e:
    raise BadImagesError(f'cannot list {folder} ({e.strerror})') from e


def _is_image(path: str) -> bool:
  return path.lower().endswith(IMAGE_EXTENSIONS)


def folder_layout(data_dir: str) -> Optional[str]:
  """'split', 'flat' or None: which image folder data_dir is, if any.

  'split' if it has a train/, test/ or validation/ folder (scan names what is
  missing); 'flat' if it has none of them and every other non-hidden folder
  holds at least one image file.
  """
  folders = _folders(data_dir)
  if set(folders) & set(SPLITS):
    return 'split'
  if folders and all(_holds_image(os.path.join(data_dir, f))
                     for f in folders):
    return 'flat'
  return None


def _holds_image(folder: str) -> bool:
  return any(_is_image(p) for p in _files(folder))


def layout_hint(data_dir: str) -> str:
  """What data_dir holds, for an error saying it is no accepted layout."""
  folders = _folders(data_dir)
  if folders:
    empty = [f for f in folders
             if not _holds_image(os.path.join(data_dir, f))]
    return (f'its folders {", ".join(empty[:3])}'
            f'{" ..." if len(empty) > 3 else ""} hold no image files')
  if any(_is_image(name) for name in os.listdir(data_dir)):
    return 'its images are not in class folders'
  return 'it holds no folders'


def _files(folder: str):
  """The non-hidden files under `folder`, in name order, each folder's files
  before its subfolders'.

  Symlinks are followed, but a folder is entered once (a second link to it is
  skipped) and a link to a folder holding the current one (a loop) is never
  followed: a walk ends, whatever the links.
  """
  seen, stack = set(), [folder]
  while stack:
    directory = stack.pop()
    try:
      status = os.stat(directory)
      with os.scandir(directory) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    except OSError as e:
      raise BadImagesError(f'cannot list {directory} ({e.strerror})') from e
    if (status.st_dev, status.st_ino) in seen:
      logging.warning('%s: not walked, a link to a folder walked already',
                      directory)
      continue
    seen.add((status.st_dev, status.st_ino))
    here, folders = os.path.realpath(directory), []
    for entry in entries:
      if entry.name.startswith('.'):
        continue
      if not entry.is_dir():
        yield entry.path  # Files, and broken links (reported unreadable).
        continue
      target = os.path.realpath(entry.path)
      if entry.is_symlink() and os.path.commonpath([here, target]) == target:
        logging.warning('%s: not followed, a link to %s, which holds it (a '
                        'loop)', entry.path, target)
      else:
        folders.append(entry.path)
    stack.extend(reversed(folders))


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


def decode_image(path: str, height: int, width: int, channels: int,
                 crop_pct: float = 1.0, interpolation: str = 'bilinear',
                 keep_aspect: bool = False) -> np.ndarray:
  """An image file -> uint8 (height, width, channels).

  Any format PIL reads (GIF: first frame). 16- and 32-bit grey images are
  scaled to 8 bits (not clipped), transparency is dropped, colour and size
  converted. crop_pct 1 resizes the whole image to (height, width); below 1
  resizes its shorter side to int(min(height, width) / crop_pct), keeping
  the aspect ratio, and takes the centre crop (torchvision's eval
  transforms: Resize then CenterCrop, the same rounding); so does
  keep_aspect at crop_pct 1 (shorter side to min(height, width)).

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
    resample = getattr(Image, INTERPOLATIONS[interpolation])
    if crop_pct < 1 or keep_aspect:
      image = _resize_shorter_side(image, int(min(height, width) / crop_pct),
                                   resample)
      top = int(round((image.height - height) / 2.0))
      left = int(round((image.width - width) / 2.0))
      image = image.crop((left, top, left + width, top + height))
    elif image.size != (width, height):
      image = image.resize((width, height), resample)
    array = np.asarray(image, np.uint8)
  return array[..., None] if channels == 1 else array


def _resize_shorter_side(image, size: int, resample):
  """`image` with its shorter side `size`, the other int(size * ratio)."""
  width, height = image.size
  if width <= height:
    new = (size, int(size * height / width))
  else:
    new = (int(size * width / height), size)
  return image if new == image.size else image.resize(new, resample)


def _check(path: str):
  """(height, width, channels) of `path`, decoded in full; or why it is not
  a usable image (a str)."""
  try:
    with _open_checked(path) as image:
      shape = (image.height, image.width, _channels(image))
      if image.format == 'JPEG':
        # Decoded at 1/8 scale: every byte of the file is still read and
        # entropy-decoded (truncation and damage show), for far less time and
        # memory than full size.
        image.draft(None, (1, 1))
      image.load()  # Decodes the body: a good header over damage fails here.
    return shape
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises many types for unreadable or non-image files.
    return first_line(e)


def _channels(image) -> int:
  """1 for a grey image (a palette of greys included), else 3."""
  if image.mode == 'P':
    palette = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)
    return 3 if (palette != palette[:, :1]).any() else 1
  grey = image.mode in ('1', 'L', 'LA', 'I', 'F') or image.mode.startswith(
      'I;')
  return 1 if grey else 3


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
  crop_pct: float = 1.0  # decode_image's.
  interpolation: str = 'bilinear'
  # > 0: images are kept larger than image_shape, stored_size square, their
  # shorter side resized to it (for rrc to crop from; see scan).
  stored_size: int = 0

  def __len__(self):
    return len(self.labels)

  @property
  def stored_shape(self) -> tuple[int, int, int]:
    """The shape of the images `get` returns."""
    if not self.stored_size:
      return tuple(self.image_shape)
    return (self.stored_size, self.stored_size, self.image_shape[2])

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width, channels = self.stored_shape
    images = np.empty((len(indices),) + self.stored_shape, np.uint8)
    for i, index in enumerate(indices):
      path = os.fsdecode(self.paths[index])
      try:
        if self.stored_size:
          images[i] = decode_image(path, height, width, channels, 1.0,
                                   self.interpolation, keep_aspect=True)
        else:
          images[i] = decode_image(path, height, width, channels,
                                   self.crop_pct, self.interpolation)
      except Exception as e:  # pylint: disable=broad-except
        # The scan decoded this file before training; only a change on disk
        # since gets here.
        raise BadImagesError(
            f'{path}: cannot decode ({first_line(e)}), though it decoded '
            f'when the run started (changed on disk since?); remove or fix '
            f'it') from e
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


def _list_classes(folder: str, class_names: Optional[Sequence[str]]):
  """(paths, labels, ignored files, class names, empty classes) of the class
  folders in `folder`."""
  found = _folders(folder)
  names = list(class_names) if class_names is not None else found
  unknown = sorted(set(found) - set(names))
  if unknown:
    raise BadImagesError(
        f'{folder} has class folders {unknown} that train/ does not '
        f'have; the classes are {names}')
  paths, labels, ignored, empty = [], [], 0, []
  for label, name in enumerate(names):
    class_dir = os.path.join(folder, name)
    if not os.path.isdir(class_dir):
      continue
    count = 0
    for path in _files(class_dir):
      if not _is_image(path):
        ignored += 1
        continue
      paths.append(path)
      labels.append(label)
      count += 1
    if not count:
      empty.append(name)
  return paths, np.asarray(labels, np.int32), ignored, names, empty


def _list(data_dir: str, layout: str):
  """({split: (paths, labels)}, class names); a flat folder's one split is
  'all', carved later."""
  if layout == 'flat':
    paths, labels, ignored, names, _ = _list_classes(data_dir, None)
    listed = {'all': (paths, labels)}
  else:
    listed, names, ignored = {}, None, 0
    for split in SPLITS:
      split_dir = os.path.join(data_dir, split)
      if not os.path.isdir(split_dir):
        if split != 'validation':
          raise BadImagesError(
              f'image folder {data_dir} has no {split}/ folder; accepted: '
              f'{data_dir}/train/<class>/<image> and '
              f'{data_dir}/test/<class>/<image>, or a flat class folder '
              f'{data_dir}/<class>/<image> without train/ and test/')
        continue
      paths, labels, more, names, empty = _list_classes(split_dir, names)
      if not names:
        raise BadImagesError(f'{split_dir} holds no class folders; '
                             f'accepted: {split}/<class>/<image>')
      if empty and split == 'train':
        logging.warning('%s: class folders without images: %s (they stay '
                        'classes, with no training examples)', split_dir,
                        ', '.join(empty))
      listed[split], ignored = (paths, labels), ignored + more
  if ignored:
    logging.info('%s: ignored %d files without an image extension (%s)',
                 data_dir, ignored, ' '.join(IMAGE_EXTENSIONS))
  return listed, names


@dataclasses.dataclass(frozen=True)
class Processes:
  """The processes that scan a folder together: this one's index, how many
  there are, and `allgather` (array -> the arrays of all processes, stacked;
  `multihost_utils.process_allgather` in a JAX job)."""
  index: int = 0
  count: int = 1
  allgather: Optional[Callable[[np.ndarray], np.ndarray]] = None


def scan(data_dir: str, image_size: int = 0, channels: int = 0,
         skip_bad_images: bool = False, test_fraction: float = 0.2,
         split_seed: int = 0, processes: Processes = Processes(),
         crop_pct: float = 1.0, interpolation: str = 'bilinear',
         train_crop_pct: float = 1.0
         ) -> tuple[dict[str, FolderSplit], list[str]]:
  """Lists and decodes every image under data_dir, then forms the splits.

  Args:
    data_dir: a split folder (train/<class>/..., test/<class>/..., optionally
      validation/<class>/...) or a flat one (<class>/...).
    image_size: images are resized to image_size x image_size; 0 keeps the
      size most images have (`_choose_size`).
    channels: 1 (grayscale) or 3 (RGB); 0 takes it from the first training
      image.
    skip_bad_images: leave unreadable files out (counted in the log) rather
      than refuse the folder.
    test_fraction: a flat folder: the share of each class held out as the
      test split (`_carve_test`); unused for a split folder.
    split_seed: a flat folder: draws the test split.
    processes: with several, each decodes a share of the files; every one of
      them must call `scan` on the same folder.
    crop_pct, interpolation: how each image is resized (decode_image).
    train_crop_pct: below 1, the train split keeps its images square with
      their shorter side int(size / train_crop_pct), at most twice the size
      (`stored_size`), for a random-resized crop to crop from; every other
      split is resized as crop_pct says.

  Returns:
    ({split name: FolderSplit}, class names).

  Raises:
    BadImagesError: one line naming the unreadable files, a split without
      images, class folders missing from train/, a class of a flat folder too
      small to carve, or a size image_size=0 cannot use.
  """
  layout = folder_layout(data_dir)
  if layout is None:
    raise BadImagesError(f'{data_dir} is no image folder '
                         f'({layout_hint(data_dir)})')
  if layout == 'flat' and not 0 < test_fraction < 1:
    raise BadImagesError(
        f'{data_dir} is a flat class folder (<class>/<image>, no train/ and '
        f'test/), whose test split is test_fraction of each class, but '
        f'test_fraction is {test_fraction}; {_CARVE_ACCEPTED}')
  listed, class_names = _list(data_dir, layout)
  everything = [p for paths, _ in listed.values() for p in paths]
  shapes, bad = _check_all(everything, processes, data_dir)
  if bad and not skip_bad_images:
    first = list(bad.items())[:3]
    raise BadImagesError(
        f'{len(bad)} unreadable image file(s) under {data_dir}: ' + '; '.join(
            f'{p} ({r})' for p, r in first) + (' ...' if len(bad) > 3 else '')
        + '. Remove them, or set --config.skip_bad_images=true to leave them '
        'out')
  if bad:
    logging.warning('Left out %d unreadable image file(s) under %s (first: '
                    '%s: %s)', len(bad), data_dir, *next(iter(bad.items())))
  del everything

  splits, start = {}, 0
  for split, (paths, labels) in listed.items():
    keep = np.flatnonzero(shapes[start:start + len(paths), 0])
    if not len(keep):
      where = data_dir if split == 'all' else os.path.join(data_dir, split)
      raise BadImagesError(f'{where} holds no readable images')
    splits[split] = ([paths[i] for i in keep], labels[keep],
                     shapes[start + keep])
    start += len(paths)
  if layout == 'flat':
    paths, labels, kept_shapes = splits.pop('all')
    for split, indices in zip(('train', 'test'), _carve_test(
        paths, labels, class_names, test_fraction, split_seed, data_dir)):
      splits[split] = ([paths[i] for i in indices], labels[indices],
                       kept_shapes[indices])
  shape = _image_shape(splits, image_size, channels, crop_pct)
  # One bytes array, not a list of str objects: ~60 bytes a file instead of
  # ~150, for sets of millions of files.
  stored_size = 0
  if train_crop_pct < 1 and shape[0] == shape[1]:
    stored_size = min(int(shape[0] / train_crop_pct), 2 * shape[0])
  return {split: FolderSplit(paths=np.array([os.fsencode(p) for p in paths]),
                             labels=labels, image_shape=shape, root=data_dir,
                             crop_pct=crop_pct, interpolation=interpolation,
                             stored_size=stored_size if split == 'train'
                             else 0)
          for split, (paths, labels, _) in splits.items()}, class_names


def _carve_test(paths: list[str], labels: np.ndarray, names: Sequence[str],
                fraction: float, seed: int, data_dir: str):
  """(train, test) indices into `paths`: round(fraction x n), at least 1, of
  the n images of each class to test, each side in the order of `paths`.

  Each file's draw is a hash of (seed, its path under data_dir): the same on
  every process and run, apart from listing order and from where the folder
  is, and adding files to a class moves few others across.
  """
  prefix = os.path.join(data_dir, '')
  test = []
  for label, name in enumerate(names):
    members = np.flatnonzero(labels == label)
    count = max(1, int(round(fraction * len(members))))
    if count >= len(members):
      raise BadImagesError(
          f'class {name!r} of {data_dir} has {len(members)} readable '
          f'image(s), and test_fraction {fraction} gives {count} of them to '
          f'test, leaving {len(members) - count} to train; {_CARVE_ACCEPTED}')
    draws = sorted(members, key=lambda i: (hashlib.blake2b(
        f'{seed}\0{paths[i][len(prefix):]}'.encode(errors='surrogateescape'),
        digest_size=8).digest(), paths[i]))
    test.extend(draws[:count])
  test = np.sort(np.asarray(test, np.int64))
  return np.setdiff1d(np.arange(len(paths)), test), test


def _image_shape(splits: dict, image_size: int, channels: int,
                 crop_pct: float = 1.0):
  """(height, width, channels) of every decoded image; logs what resizing
  does to images of other shapes."""
  shapes = np.concatenate([s for _, _, s in splits.values()])
  paths = [p for split_paths, _, _ in splits.values() for p in split_paths]
  if image_size:
    height = width = image_size
  else:
    height, width = _choose_size(shapes, paths)
  squashed = np.count_nonzero(shapes[:, 0] * width != shapes[:, 1] * height)
  gcd = math.gcd(width, height)
  if squashed and crop_pct == 1:  # Below 1, each is centre-cropped.
    logging.warning(
        '%d of %d images are not %s; each is resized to %dx%d (width x '
        'height) without keeping its aspect ratio: squashed, not cropped or '
        'padded', squashed, len(shapes), 'square' if height == width else
        f'{width // gcd}:{height // gcd} (width:height)', width, height)
  return height, width, channels or int(splits['train'][2][0, 2])


def _choose_size(shapes: np.ndarray, paths: list[str]) -> tuple[int, int]:
  """(height, width) for image_size=0: the size at least half the images
  have, if that is a usable training size."""
  sizes, first, counts = np.unique(shapes[:, :2], axis=0, return_index=True,
                                   return_counts=True)
  best = int(np.argmax(counts))  # Ties: the smallest size, np.unique sorts.
  height, width = (int(x) for x in sizes[best])
  areas = sizes[:, 0] * sizes[:, 1]
  small, large = sizes[np.argmin(areas)], sizes[np.argmax(areas)]
  if 2 * counts[best] < len(shapes):
    raise BadImagesError(
        f'image_size=0 takes the size most images have, but the '
        f'{len(shapes)} images have {len(sizes)} sizes, from '
        f'{small[1]}x{small[0]} to {large[1]}x{large[0]} (width x height), '
        f'and none is shared by half of them; set --config.image_size '
        f'(e.g. 64) to resize every image to that square size')
  if min(height, width) < MIN_SIDE or max(height, width) > MAX_ASPECT * min(
      height, width):
    raise BadImagesError(
        f'image_size=0 takes the size most images have, {width}x{height} '
        f'(width x height; e.g. {paths[first[best]]}), which is too small or '
        f'too narrow to train on (accepted: sides of at least {MIN_SIDE} px, '
        f'at most {MAX_ASPECT}:1); set --config.image_size (e.g. 32) to '
        f'resize every image to that square size')
  if len(sizes) > 1:
    logging.info('image_size=0: images are made %dx%d (width x height), the '
                 'size of %d of %d; sizes range from %dx%d to %dx%d',
                 width, height, counts[best], len(shapes), small[1], small[0],
                 large[1], large[0])
  return height, width


def _check_all(paths: list[str], processes: Processes,
               data_dir: str) -> tuple[np.ndarray, dict[str, str]]:
  """Decodes every file of `paths`: (shapes, bad).

  shapes: int32 (len(paths), 3), each file's (height, width, channels), zeros
  for the bad ones; bad: {path: why} for each file that does not decode, in
  the order of `paths`. With several processes each decodes its share of the
  files and they exchange the shapes: every process gets the same answer from
  one pass over the folder, not one pass per process.
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
  # int32: what process_allgather keeps without jax_enable_x64.
  shapes, bad = np.zeros((len(mine), 3), np.int32), {}
  progress = Progress(
      f'Checking image files under {data_dir} (each decoded in full' + (
          f'; a share in each of {count} processes)' if count > 1 else ')'),
      len(mine))
  with concurrent.futures.ThreadPoolExecutor(NUM_THREADS) as pool:
    # In chunks: Executor.map submits every item at once, and a million
    # pending futures would cost more memory than the file list.
    for lo in range(0, len(mine), _CHUNK):
      chunk = mine[lo:lo + _CHUNK]
      for i, result in enumerate(pool.map(_check, chunk), lo):
        if isinstance(result, str):
          bad[mine[i]] = result
        else:
          shapes[i] = result
        progress.add()
  progress.finish()
  if count == 1 or not paths:
    return shapes, bad
  rows = -(-len(paths) // count)  # Shares differ by one file at most.
  share = np.zeros((rows, 3), np.int32)
  share[:len(mine)] = shapes
  gathered = np.asarray(processes.allgather(share))
  shapes = np.zeros((len(paths), 3), np.int32)
  for p in range(count):
    shapes[p::count] = gathered[p, :len(range(p, len(paths), count))]
  # Only the shapes are exchanged, not why a file failed: another process's
  # reason is looked up again for the first three, the ones an error names.
  everywhere = {}
  for n, i in enumerate(np.flatnonzero(shapes[:, 0] == 0)):
    path = paths[i]
    reason = bad.get(path) or (_check(path) if n < 3 else None)
    everywhere[path] = (reason if isinstance(reason, str) else
                        'unreadable in another process')
  return shapes, everywhere


def decode_all(split: FolderSplit,
               progress: Optional[Progress] = None) -> np.ndarray:
  """Decodes a whole split into one uint8 array, in parallel threads."""
  images = np.empty((len(split),) + split.stored_shape, np.uint8)
  chunk = 256

  def fill(start):
    indices = np.arange(start, min(start + chunk, len(split)))
    images[indices] = split.get(indices)[0]
    return len(indices)

  with concurrent.futures.ThreadPoolExecutor(NUM_THREADS) as pool:
    for done in pool.map(fill, range(0, len(split), chunk)):
      if progress is not None:
        progress.add(done)
  return images
