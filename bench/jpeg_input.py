"""Photo-sized JPEGs to 224x224: the trainer's image-folder input beside
PyTorch's DataLoader, and JPEG decoders one image at a time.

A folder of generated PHOTO_SIZE JPEGs (train/<class>/, test/<class>/,
written once under /tmp) is read as training batches of BATCH, timed in
alternation for REPEATS passes (the median counts), each pass timing
TIMED_BATCHES after WARMUP_BATCHES:

  * ours: `data_sources.load_dataset(loading='stream')` and
    `input_pipeline.train_batches` on `READ_THREADS` Grain threads, the host
    side of `device_train_batches`;
  * PyTorch: a map-style dataset doing `image_folder.decode_image`'s work
    with PIL (open, RGB, bilinear resize; checked to give the same pixels)
    under a shuffled DataLoader with as many worker processes;
  * both on the caller's thread alone (threads=0, num_workers=0), for scale.

Both run in this process with glibc's malloc as it comes, then the two
with READ_THREADS again after `runtime.keep_freed_memory()`, main.py's
setting, which the DataLoader's forked workers inherit. JAX's backends are
never started, so the DataLoader forks its workers as its users' processes
do. Then the folder decoded into memory (`loading='memory'`), and decoders
on one thread, each decoding and resizing the same files to 224x224: our
`decode_image` (and its decoding alone), PIL with JPEG DCT scaling
(`Image.draft`), simplejpeg, pillow-simd, and TensorFlow, on these photos
and on larger ones (LARGE_SIZE), with how far each one's pixels are from
ours. simplejpeg and pillow-simd are read from throwaway folders, never the
project's venv:

  .venv/bin/pip install --target /tmp/bench-decoders/simplejpeg simplejpeg
  CC="cc -mavx2" .venv/bin/pip install --no-deps \
      --target /tmp/bench-decoders/pillow-simd pillow-simd

pillow-simd replaces PIL, so it is timed in a child process
(`simd_decoder_child`) with its folder first on the path.
"""

import concurrent.futures
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import common
import contenders

# The generated folder: image size (width, height), classes, images per split.
PHOTO_SIZE = (500, 375)
CLASSES = 10
TRAIN_IMAGES = 2500
TEST_IMAGES = 500
FOLDER = '/tmp/bench-jpeg-photos-{}x{}-{}'.format(*PHOTO_SIZE, TRAIN_IMAGES)
# Larger photos, where DCT scaling can skip most of the decoding.
LARGE_SIZE = (2000, 1500)
LARGE_IMAGES = 24
LARGE_FOLDER = '/tmp/bench-jpeg-large-{}x{}-{}'.format(*LARGE_SIZE,
                                                       LARGE_IMAGES)
# The loaders: batch size, batches per pass before timing and timed.
BATCH = 64
WARMUP_BATCHES = 4
TIMED_BATCHES = 20
REPEATS = 4
# The decoders alone: files per pass (the best of REPEATS passes counts),
# and the files whose pixels are compared with ours.
DECODE_IMAGES = 100
COMPARED_IMAGES = 16
# The loaders, by their number of threads or workers; the DataLoader with
# READ_THREADS workers is the one the others are compared with.
OURS_ROUTE = 'ours: folder streamed, input_pipeline.train_batches, threads={}'
TORCH_ROUTE = 'PyTorch: DataLoader, num_workers={}, shuffle=True'
# The decoder the others are compared with, and the decoding alone.
OURS = 'PIL: image_folder.decode_image (ours)'
DECODE_ONLY = 'PIL: open and decode only, no convert or resize'
# Where the throwaway installs of the optional decoders are looked for.
DECODER_PATHS = {'simplejpeg': '/tmp/bench-decoders/simplejpeg',
                 'pillow-simd': '/tmp/bench-decoders/pillow-simd'}


def compare_jpeg_input(args):
  """Times the loaders and the decoders; prints the tables (--out: also
  OUT.md; --json: the figures)."""
  import data_sources  # pylint: disable=g-import-not-at-top
  import input_pipeline  # pylint: disable=g-import-not-at-top
  import runtime  # pylint: disable=g-import-not-at-top
  size, threads = args.image_size, input_pipeline.READ_THREADS
  load = os.getloadavg()[0]
  folder = write_photo_folder(FOLDER, PHOTO_SIZE, TRAIN_IMAGES, TEST_IMAGES)
  start = time.perf_counter()
  train = data_sources.load_dataset('custom', folder, image_size=size,
                                    loading='stream').train
  scan_seconds = time.perf_counter() - start
  rates = loader_rates(train, size, threads)
  memory = memory_decode(folder, size, scan_seconds)
  decoders = decoder_rates(train, size, DECODE_IMAGES)
  large = data_sources.load_dataset(
      'custom', write_photo_folder(LARGE_FOLDER, LARGE_SIZE, LARGE_IMAGES, 1),
      image_size=size, loading='stream').train
  large_decoders = decoder_rates(large, size, LARGE_IMAGES)
  # Last, as the setting lasts for the rest of the process; the DataLoader's
  # workers, forked from it, inherit it too.
  kept = {}
  if runtime.keep_freed_memory():
    kept = loader_rates(train, size, threads, serial=False,
                        suffix=', main.py\'s malloc setting')
  lines = header(folder, size, threads, load, args)
  lines += loader_table([rates, kept], threads) + ['', memory, '']
  lines += decoder_table(decoders, f'{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}', size)
  lines += [''] + decoder_table(
      large_decoders, f'{LARGE_SIZE[0]}x{LARGE_SIZE[1]}', size)
  common.report(lines, args.out)
  common.write_json(args.json, {
      'rates': {**rates, **kept}, 'memory': memory, 'decoders': decoders,
      'large_decoders': large_decoders})


def loader_rates(train, size, threads, serial=True, suffix=''
                 ) -> dict[str, list[float]]:
  """images/s of each loader, pass by pass, the loaders taken in turn:
  ours and the DataLoader with `threads` (with `serial`, also on the
  caller's thread alone); `suffix` ends each name."""
  routes = {OURS_ROUTE.format(threads): lambda seed: ours_rate(
      train, threads, seed)}
  if serial:
    routes[OURS_ROUTE.format(0)] = lambda seed: ours_rate(train, 0, seed)
  if importlib.util.find_spec('torch') is not None:
    check_same_pixels(train, size)
    routes[TORCH_ROUTE.format(threads)] = lambda seed: torch_rate(
        train, threads, seed)
    if serial:
      routes[TORCH_ROUTE.format(0)] = lambda seed: torch_rate(train, 0, seed)
      routes[TORCH_ROUTE.format(0) + ', torch.set_num_threads(1)'] = (
          lambda seed: torch_rate(train, 0, seed, torch_threads=1))
  rates = {name + suffix: [] for name in routes}
  for seed in range(REPEATS):
    for name, route in routes.items():
      rates[name + suffix].append(route(seed))
      print(f'{name}{suffix}: {rates[name + suffix][-1]:.0f} images/s',
            flush=True)
  return rates


def memory_decode(folder, size, scan_seconds) -> str:
  """A line on decoding the folder into memory (loading='memory')."""
  import data_sources  # pylint: disable=g-import-not-at-top
  import image_folder  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  dataset = data_sources.load_dataset('custom', folder, image_size=size,
                                      loading='memory')
  seconds = time.perf_counter() - start
  total = len(dataset.train) + len(dataset.test)
  decode = seconds - scan_seconds
  return (f'Decoded into memory (`data_sources.load_dataset(loading='
          f'\'memory\')`, `image_folder.decode_all` on '
          f'{image_folder.NUM_THREADS} threads): {total:,} images in '
          f'{seconds:.1f} s, {1e3 * seconds / total:.2f} ms per image of wall '
          f'time. Of that, {scan_seconds:.1f} s is the scan that the streamed '
          f'route makes too (each file checked once, JPEGs at 1/8 scale); '
          f'the decoding itself {1e3 * decode / total:.2f} ms per image, '
          f'{total / decode:.0f} images/s.')


def header(folder, size, threads, load, args) -> list[str]:
  """The machine, the versions, the folder and the command."""
  import PIL  # pylint: disable=g-import-not-at-top
  from PIL import features  # pylint: disable=g-import-not-at-top
  with open('/proc/cpuinfo') as f:
    cpu = next((l.split(':', 1)[1].strip() for l in f
                if l.startswith('model name')), platform.processor())
  sizes = sorted(os.path.getsize(os.path.join(d, n))
                 for d, _, names in os.walk(os.path.join(folder, 'train'))
                 for n in names)
  versions = [f'Pillow {PIL.__version__} (libjpeg-turbo '
              f'{features.version("jpg")})',
              f'grain {importlib.metadata.version("grain")}']
  if importlib.util.find_spec('torch'):
    versions.append(f'torch {importlib.metadata.version("torch")}')
  command = ('.venv/bin/python bench/benchmark.py --mode=jpeg_input' +
             (f' --out={args.out}' if args.out else ''))
  return [
      '# Photo-sized JPEGs to 224x224: our input beside PyTorch\'s',
      '', '```sh', command, '```', '',
      f'{cpu}, {os.cpu_count()} cores (load average {load:.1f} when the '
      f'run began: the cores are shared); {", ".join(versions)}; Python '
      f'{platform.python_version()}.', '',
      f'Folder: {TRAIN_IMAGES:,} train and {TEST_IMAGES:,} test JPEGs of '
      f'{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} in {CLASSES} classes (gradients, '
      f'shapes, texture and noise; quality 90-95), '
      f'{statistics.median(sizes) / 1e3:.0f} KB median, '
      f'{sizes[len(sizes) // 10] / 1e3:.0f}-'
      f'{sizes[len(sizes) * 9 // 10] / 1e3:.0f} KB from the 10th to the 90th '
      f'percentile, in the page cache; each resized to {size}x{size} RGB, '
      f'bilinear, aspect ratio not kept (image_size={size}).', '',
      f'Loaders: batches of {BATCH}, {TIMED_BATCHES} timed after '
      f'{WARMUP_BATCHES} (worker start-up not timed), median of {REPEATS} '
      f'passes taken in alternation; the ratio is the median of the ratios '
      f'pass by pass. threads={threads} is `input_pipeline.READ_THREADS` '
      f'(one per core): Grain threads in this process, reading up to '
      f'{2 * threads} batches ahead; the DataLoader gets as many worker '
      f'processes (prefetch_factor 2).', '',
      f'Decoders: one thread, the best of {REPEATS} passes over the first '
      f'{DECODE_IMAGES} training files (and over {LARGE_IMAGES} '
      f'{LARGE_SIZE[0]}x{LARGE_SIZE[1]} photos made the same way), taken in '
      f'turn; pixels compared with ours on the first {COMPARED_IMAGES}.',
      '']


def loader_table(groups, threads) -> list[str]:
  """images/s of each loader, and the median of its ratios, pass by pass, to
  the DataLoader with as many workers timed in turn with it (the groups of
  loader_rates)."""
  lines = [f'| loader, batch {BATCH} | images/s (median) | each pass | vs '
           f'DataLoader, {threads} workers |', '| --- | ---: | --- | ---: |']
  for rates in groups:
    base = next((v for name, v in rates.items()
                 if name.startswith(TORCH_ROUTE.format(threads))), None)
    for name, values in rates.items():
      ratio = '-' if base is None else (
          f'{statistics.median(v / b for v, b in zip(values, base)):.2f}x')
      lines.append(f'| {name} | {statistics.median(values):.0f} | '
                   f'{", ".join(f"{v:.0f}" for v in values)} | {ratio} |')
  return lines


def decoder_table(decoders, photo, size) -> list[str]:
  """ms per image of each decoder, ratios to ours, pixels beside ours."""
  base = decoders[OURS]['seconds']
  lines = [f'| decoder, one thread, {photo} JPEG to {size}x{size} | ms per '
           f'image | images/s | vs ours | pixels vs ours |',
           '| --- | ---: | ---: | ---: | --- |']
  for name, found in decoders.items():
    if 'seconds' not in found:
      lines.append(f'| {name} | - | - | - | {found["missing"]} |')
      continue
    seconds = found['seconds']
    lines.append(f'| {name} | {1e3 * seconds:.2f} | {1 / seconds:.0f} | '
                 f'{base / seconds:.2f}x | {found["pixels"]} |')
  return lines


def ours_rate(split, threads, seed) -> float:
  """images/s of the trainer's training batches from `split`."""
  import input_pipeline  # pylint: disable=g-import-not-at-top
  batches = input_pipeline.train_batches(
      split, BATCH, seed, 0, WARMUP_BATCHES + TIMED_BATCHES, threads=threads)
  return timed_batches(batches)


def torch_rate(split, workers, seed, torch_threads=0) -> float:
  """images/s of a shuffled DataLoader over the same files; with
  `torch_threads`, torch.set_num_threads(torch_threads) meanwhile (workers
  set 1 for themselves)."""
  import torch  # pylint: disable=g-import-not-at-top
  saved = torch.get_num_threads()
  if torch_threads:
    torch.set_num_threads(torch_threads)
  try:
    loader = torch.utils.data.DataLoader(
        PilFolder(split), batch_size=BATCH, shuffle=True, drop_last=True,
        num_workers=workers, generator=torch.Generator().manual_seed(seed))
    batches = iter(loader)
    rate = timed_batches(batches)
    del batches  # Stops the workers, after the clock.
  finally:
    torch.set_num_threads(saved)
  return rate


def timed_batches(batches) -> float:
  """images/s of TIMED_BATCHES of `batches` after WARMUP_BATCHES."""
  for _ in range(WARMUP_BATCHES):
    next(batches)
  start = time.perf_counter()
  for _ in range(TIMED_BATCHES):
    images, _ = next(batches)
  seconds = time.perf_counter() - start
  assert len(images) == BATCH, images.shape
  return BATCH * TIMED_BATCHES / seconds


class PilFolder:
  """A PyTorch map-style dataset as its users write one: PIL opens each
  file, converts it to RGB and resizes it, bilinear (default_collate stacks
  the arrays). No torch import: DataLoader needs only len and getitem."""

  def __init__(self, split):
    self.paths = [os.fsdecode(p) for p in split.paths]
    self.labels = [int(l) for l in split.labels]
    self.height, self.width, _ = split.image_shape

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, i):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    with Image.open(self.paths[i]) as image:
      image = image.convert('RGB').resize((self.width, self.height),
                                          Image.BILINEAR)
      return np.array(image, np.uint8), self.labels[i]


def check_same_pixels(split, size):
  """Fails unless PilFolder and decode_image give the same pixels."""
  import image_folder  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  dataset = PilFolder(split)
  for i in range(COMPARED_IMAGES):
    ours = image_folder.decode_image(dataset.paths[i], size, size, 3)
    if not np.array_equal(ours, dataset[i][0]):
      raise AssertionError(f'{dataset.paths[i]}: PilFolder and decode_image '
                           f'differ; the two loaders would not do the same '
                           f'work')


def decoder_rates(split, size, count) -> dict:
  """{decoder: {'seconds': per image, 'pixels': beside ours} or
  {'missing': why}} on one thread, over the first `count` files of `split`:
  the best of REPEATS passes, the decoders taken in turn."""
  import image_folder  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  paths = [os.fsdecode(p) for p in split.paths[:count]]

  def decode_only(path):
    with Image.open(path) as image:
      image.load()

  def seconds_per_image(decode):
    return contenders.timed(lambda: [decode(p) for p in paths]) / len(paths)

  ours = lambda path: image_folder.decode_image(path, size, size, 3)
  decoders = {OURS: ours, DECODE_ONLY: decode_only, **draft_decoders(size),
              **simplejpeg_decoders(size), **tf_decoders(size)}
  reference = [ours(p) for p in paths[:COMPARED_IMAGES]]
  found = {name: {'missing': decode} for name, decode in decoders.items()
           if isinstance(decode, str)}
  # Compared first: the first calls also warm each decoder up.
  timings = {name: [] for name in decoders if name not in found}
  for name in timings:
    found[name] = {'pixels': (
        'not resized: the decoding alone' if name == DECODE_ONLY else
        pixel_difference(reference, [decoders[name](p) for p in
                                     paths[:COMPARED_IMAGES]]))}
  for _ in range(REPEATS):
    for name, seconds in timings.items():
      seconds.append(seconds_per_image(decoders[name]))
  for name, seconds in timings.items():
    found[name]['seconds'] = min(seconds)
  found['pillow-simd: image_folder.decode_image'] = simd_decoder(
      paths, reference, size)
  return {name: found[name] for name in [*decoders, *found]
          if name in found}


def draft_decoders(size) -> dict:
  """decode_image's work with PIL's JPEG DCT scaling first: draft to the
  target (the largest 1/2, 1/4 or 1/8 scale that stays at least as large),
  and to half the target (one side may then be scaled up)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  def decode(path, draft_size):
    with Image.open(path) as image:
      image.draft('RGB', draft_size)
      image = image.convert('RGB').resize((size, size), Image.BILINEAR)
      return np.asarray(image, np.uint8)

  return {f'PIL, draft(\'RGB\', ({size}, {size})) then resize':
              lambda path: decode(path, (size, size)),
          f'PIL, draft(\'RGB\', ({size // 2}, {size // 2})) then resize':
              lambda path: decode(path, (size // 2, size // 2))}


def simplejpeg_decoders(size) -> dict:
  """simplejpeg (libjpeg-turbo, no PIL) decoding, PIL resizing; also with
  its own DCT scaling to at least the target. A str where not installed."""
  name = 'simplejpeg, decode_jpeg then PIL resize'
  scaled = f'simplejpeg, min_height=min_width={size} then PIL resize'
  sys.path.insert(0, DECODER_PATHS['simplejpeg'])
  try:
    import simplejpeg  # pylint: disable=g-import-not-at-top
  except ImportError:
    why = (f'not installed (pip install --target '
           f'{DECODER_PATHS["simplejpeg"]} simplejpeg)')
    return {name: why, scaled: why}
  finally:
    sys.path.pop(0)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  def decode(path, **scale):
    with open(path, 'rb') as f:
      array = simplejpeg.decode_jpeg(f.read(), colorspace='RGB', **scale)
    return np.asarray(Image.fromarray(array).resize((size, size),
                                                    Image.BILINEAR))

  return {name: decode,
          scaled: lambda path: decode(path, min_height=size, min_width=size)}


def tf_decoders(size) -> dict:
  """tf.io.decode_jpeg then tf.image.resize (bilinear, antialiased as
  PIL's), on one thread. A str where TensorFlow does not import."""
  name = 'TensorFlow: decode_jpeg, resize(bilinear, antialias=True)'
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return {name: f'does not import ({e})'}
  try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
  except RuntimeError:
    pass  # Already started by an earlier call: keeps its first setting.

  def decode(path):
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    image = tf.image.resize(image, (size, size), 'bilinear', antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8).numpy()

  return {name: decode}


def pixel_difference(reference, arrays) -> str:
  """'same' or the mean and largest absolute difference, in uint8 levels."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  differences = [np.abs(a.astype(np.int16) - b.astype(np.int16))
                 for a, b in zip(reference, arrays)]
  largest = max(int(d.max()) for d in differences)
  if not largest:
    return 'same'
  mean = float(np.mean([d.mean() for d in differences]))
  return f'mean {mean:.2f}, max {largest} levels'


def simd_decoder(paths, reference, size) -> dict:
  """decode_image under pillow-simd, in a child with its folder first on
  the path: {'seconds', 'pixels'} or {'missing'}."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  folder = DECODER_PATHS['pillow-simd']
  if not os.path.isdir(os.path.join(folder, 'PIL')):
    return {'missing': f'not installed (CC="cc -mavx2" pip install --no-deps '
                       f'--target {folder} pillow-simd)'}
  request = f'/tmp/bench-jpeg-simd-{os.getpid()}.npz'
  np.savez(request, paths=np.array(paths), size=size,
           reference=np.stack(reference))
  try:
    proc = subprocess.run(
        [sys.executable, '-c', 'import sys, jpeg_input; '
         'jpeg_input.simd_decoder_child(sys.argv[1])', request],
        cwd=contenders.ROOT, capture_output=True, text=True,
        env={**os.environ, 'PYTHONPATH': os.pathsep.join(
            [folder, os.path.join(contenders.ROOT, 'bench'), contenders.ROOT])})
  finally:
    os.remove(request)
  if proc.returncode:
    return {'missing': f'failed: {proc.stderr.strip().splitlines()[-1]}'}
  return json.loads(proc.stdout.splitlines()[-1])


def simd_decoder_child(request):
  """Child: decode_image's time per image under the PIL found first on the
  path (pillow-simd), and its pixels beside ours, as JSON."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import PIL  # pylint: disable=g-import-not-at-top
  import image_folder  # pylint: disable=g-import-not-at-top
  if 'post' not in PIL.__version__:
    sys.exit(f'PIL {PIL.__version__} from {PIL.__file__} is no pillow-simd')
  with np.load(request) as saved:
    paths, size = [str(p) for p in saved['paths']], int(saved['size'])
    reference = list(saved['reference'])
  decode = lambda path: image_folder.decode_image(path, size, size, 3)
  seconds = min(contenders.timed(lambda: [decode(p) for p in paths])
                for _ in range(REPEATS)) / len(paths)
  pixels = pixel_difference(reference, [decode(p) for p in paths[
      :len(reference)]])
  print(json.dumps({'seconds': seconds,
                    'pixels': f'{pixels} (pillow-simd {PIL.__version__})'}))


def write_photo_folder(path, size, num_train, num_test):
  """path/{train,test}/class<k>/NNNNN.jpg: photo-like JPEGs of `size`
  (width, height) in CLASSES classes, written once; returns path."""
  done = os.path.join(path, '.complete')
  if os.path.exists(done):
    return path
  items = [(split, i) for split, n in (('train', num_train),
                                       ('test', num_test)) for i in range(n)]
  for split in ('train', 'test'):
    for c in range(CLASSES):
      os.makedirs(os.path.join(path, split, f'class{c}'), exist_ok=True)

  def write(item):
    split, i = item
    seed = i if split == 'train' else num_train + i
    image, quality = photo(seed, size)
    image.save(os.path.join(path, split, f'class{i % CLASSES}', f'{i:05d}.jpg'),
               quality=quality)

  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    list(pool.map(write, items))
  open(done, 'w').close()
  return path


def photo(seed, size):
  """A photo-like PIL image (a colour gradient, blurred texture, filled
  shapes and sensor-like noise) and the JPEG quality to save it at."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  width, height = size
  angle = rng.uniform(0, 2 * np.pi)
  ramp = (np.cos(angle) * np.linspace(0, 1, width, dtype=np.float32)[None] +
          np.sin(angle) * np.linspace(0, 1, height, dtype=np.float32)[:, None])
  ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
  low, high = rng.uniform(0, 255, (2, 3)).astype(np.float32)
  pixels = low + ramp[..., None] * (high - low)
  cell = int(rng.integers(3, 24))  # Texture grain: pixels per random value.
  coarse = rng.integers(0, 256, (height // cell + 1, width // cell + 1, 3),
                        dtype=np.uint8)
  texture = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC),
                       np.float32) - 128
  pixels += texture * rng.uniform(0.2, 0.6)
  image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(3, 12))):
    x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
    box = (x, y, x + int(rng.integers(10, width // 2)),
           y + int(rng.integers(10, height // 2)))
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
  noise = rng.normal(0, rng.uniform(3, 12), (height, width, 3)).astype(
      np.float32)
  pixels = np.asarray(image, np.float32) + noise
  return (Image.fromarray(pixels.clip(0, 255).astype(np.uint8)),
          int(rng.integers(90, 96)))
