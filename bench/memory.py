"""Peak RSS of reading a generated image folder, streamed and in memory.

Folders of FOLDER_SIZES random RGB PNGs; each reading runs in a fresh
process (the child mode read_child) with main.py's set-up, so that its peak
RSS is its own.
"""

import json
import resource
import time

import common

# The folders: training images in each, their square size, test images.
FOLDER_SIZES = (10_000, 100_000)
IMAGE_SIZE = 64
TEST_IMAGES = 100
LOADINGS = ('stream', 'memory')
# What each child reads: READ_BATCHES batches of READ_BATCH_SIZE.
READ_BATCHES = 100
READ_BATCH_SIZE = 128


def measure_peak_memory(args):
  """Reads each folder both ways; the table."""
  data = common.load(args.data_dir)
  lines = ['| images on disk | loading | peak RSS (MB) | images read | '
           'seconds |', '| ---: | --- | ---: | ---: | ---: |']
  for n in FOLDER_SIZES:
    folder = common.write_image_folder(f'/tmp/bench-rgb-{n}', data, n,
                                       num_test=TEST_IMAGES,
                                       rgb_size=IMAGE_SIZE)
    for loading in LOADINGS:
      result = common.child('read_child', folder, loading=loading)
      lines.append(f'| {n:,} | {loading} | {result["peak_rss_mb"]:.0f} | '
                   f'{result["images"]:,} | {result["seconds"]:.1f} |')
      print(lines[-1], flush=True)
  print('\n'.join(lines))


def read_child(args):
  """Child mode of measure_peak_memory: loads the folder --data_dir as
  --loading says and reads READ_BATCHES batches; peak RSS, images and
  seconds as JSON."""
  import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup(log=False)
  import data_sources  # pylint: disable=g-import-not-at-top
  import input_pipeline  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  dataset = data_sources.load_dataset('custom', args.data_dir,
                                      loading=args.loading)
  count = 0
  for images, _ in input_pipeline.train_batches(
      dataset.train, READ_BATCH_SIZE, 0, 0, READ_BATCHES,
      threads=input_pipeline.READ_THREADS):
    count += len(images)
  print(json.dumps({
      'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      'images': count, 'seconds': time.perf_counter() - start}))
