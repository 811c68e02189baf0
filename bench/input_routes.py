"""Train images/s of the trainer's input routes, and of the loaders alone.

The trainer in this process with main.py's set-up, timed in alternation
(windows.alternate_windows): host batches put each step, sent ahead
(prefetch), gathered on the device (data_on_device), and a folder of
Fashion-MNIST PNGs decoded into memory or per batch (streamed); ratios are
to putting each batch when it is needed. Then the loaders alone, with
nothing else running, on the same permuted indices: Grain's threads (the
trainer's route), one thread, and tf.data's parallel map.
"""

import os
import statistics

import common
import contenders
import windows

BATCHES = (32, 128)
# The photo-like folder: its images, their size, and the size they are
# resized to.
JPEG_IMAGES = 2000
JPEG_SIZE = (320, 240)
JPEG_CLASSES = 4
JPEG_TEST_IMAGES = 8
RESIZED = 224
# The loaders alone: (batch size, batches) per folder, and passes of each
# loader (the fastest counts).
PNG_LOADER = (128, 60)
JPEG_LOADER = (64, 30)
LOADER_REPEATS = 3


def compare_input_routes(args):
  """Times every route at BATCHES, then the loaders; the tables."""
  import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup(log=False)
  import data_sources  # pylint: disable=g-import-not-at-top
  data = common.load(args.data_dir)
  folder = common.write_image_folder(
      f'/tmp/bench-folder-{args.folder_images}', data, args.folder_images)
  streamed = data_sources.load_dataset('custom', folder, loading='stream')
  in_memory = data_sources.load_dataset('custom', folder, loading='memory')
  lineup = []
  for batch in BATCHES:
    lineup += [
        (f'b{batch} memory, put each step', data, batch,
         {'prefetch_batches': 0}),
        (f'b{batch} memory, 2 batches ahead (default)', data, batch, {}),
        (f'b{batch} memory, data_on_device', data, batch,
         {'data_on_device': True}),
        (f'b{batch} PNG folder decoded into memory', in_memory, batch, {}),
        (f'b{batch} PNG folder streamed (decoded per batch)', streamed, batch,
         {})]
  rates = windows.alternate_windows(
      {name: (contenders.make('trainer', dataset, batch, **kwargs), batch)
       for name, dataset, batch, kwargs in lineup}, args)
  print(f'\n{os.cpu_count()} CPU cores; median of {args.windows} windows of '
        f'{args.window_images} images; folder: {args.folder_images} PNGs '
        f'from Fashion-MNIST\n')
  lines = ['| input route | train images/s | steps/s | vs put each step |',
           '| --- | ---: | ---: | ---: |']
  for name, _, batch, _ in lineup:
    rate = statistics.median(rates[name])
    base = statistics.median(rates[f'b{batch} memory, put each step'])
    lines.append(f'| {name} | {rate:.0f} | {rate / batch:.1f} | '
                 f'{rate / base:.2f}x |')
  print('\n'.join(lines))
  photos = data_sources.load_dataset(
      'custom', write_jpeg_folder(f'/tmp/bench-jpeg-{JPEG_IMAGES}'),
      loading='stream', image_size=RESIZED)
  loaders = {
      '28x28 PNG': loader_rates(streamed.train, *PNG_LOADER),
      f'{JPEG_SIZE[0]}x{JPEG_SIZE[1]} JPEG to {RESIZED}x{RESIZED}':
          loader_rates(photos.train, *JPEG_LOADER)}
  print(f'\n| loader alone ({os.cpu_count()} cores) | ' + ' | '.join(
      loaders) + ' |\n| --- | ---: | ---: |')
  for name in loaders['28x28 PNG']:
    print(f'| {name} | ' + ' | '.join(
        f'{by_route[name]:.0f} images/s' for by_route in loaders.values())
          + ' |')
  common.write_json(args.json, {'train': rates, 'loaders': loaders})


def write_jpeg_folder(path):
  """JPEG_IMAGES photo-like RGB JPEGs of JPEG_SIZE (smooth colour fields)
  in JPEG_CLASSES classes, once; returns path."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  done = os.path.join(path, '.complete')
  if os.path.exists(done):
    return path
  rng = np.random.default_rng(0)
  for split, count in (('train', JPEG_IMAGES), ('test', JPEG_TEST_IMAGES)):
    for i in range(count):
      folder = os.path.join(path, split, f'class{i % JPEG_CLASSES}')
      os.makedirs(folder, exist_ok=True)
      small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
      Image.fromarray(small).resize(JPEG_SIZE, Image.BICUBIC).save(
          os.path.join(folder, f'{i:05d}.jpg'), quality=90)
  open(done, 'w').close()
  return path


def loader_rates(split, batch, steps):
  """Images/s of reading an image folder's batches with nothing else
  running: Grain's threads (the trainer's route), one thread, and tf.data's
  parallel map (decoding and resizing in TensorFlow). All read the same
  permuted indices."""
  import input_pipeline  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  paths = np.asarray(split.paths)
  order = input_pipeline.epoch_permutation(len(paths), 0, 0)[:batch * steps]
  height, width, channels = split.image_shape

  def decode(path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels,
                               expand_animations=False)
    return tf.image.resize(image, (height, width))

  def grain_route():
    for _ in input_pipeline.train_batches(split, batch, 0, 0, steps,
                                          threads=input_pipeline.READ_THREADS):
      pass

  def tf_data_route():
    ds = tf.data.Dataset.from_tensor_slices(paths[order]).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for _ in ds.batch(batch).prefetch(tf.data.AUTOTUNE):
      pass

  def serial_route():
    for _ in input_pipeline.train_batches(split, batch, 0, 0, steps,
                                          threads=0):
      pass

  routes = {f'Grain MapDataset, {input_pipeline.READ_THREADS} threads, PIL '
            f'(ours)': grain_route,
            'tf.data, parallel map (AUTOTUNE)': tf_data_route,
            'PIL on one thread, no read-ahead': serial_route}
  times = {name: [] for name in routes}
  for _ in range(LOADER_REPEATS):
    for name, route in routes.items():
      times[name].append(contenders.timed(route))
  return {name: batch * steps / min(t) for name, t in times.items()}
