"""Side-by-side training benchmark on Fashion-MNIST (local IDX files).

  .venv/bin/python bench/benchmark.py                 # throughput table
  .venv/bin/python bench/benchmark.py --mode=tta      # time to accuracy
  .venv/bin/python bench/benchmark.py --mode=dtype    # float32 vs bfloat16
  .venv/bin/python bench/benchmark.py --mode=input    # input routes
  .venv/bin/python bench/benchmark.py --mode=memory   # peak RSS, 10k vs 100k
  .venv/bin/python bench/benchmark.py --mode=resnet50 # ResNet-50 bf16 (GPU)
  .venv/bin/python bench/benchmark.py --mode=end_to_end  # 10 epochs, whole

Throughput: rounds of one timed window per contender and batch size, the
contenders alternating (A B C A B C ...) so that drift of the machine hits
all alike; the table gives the median window. Each window runs in a fresh
process after warm-up (compilation), so that the trainer runs with the XLA
flags main.py sets and the others with XLA's defaults, as their users run
them. Each window trains the same number of images. Ratios are to the Flax
quick-start reference loop measured in the same invocation.

Time to accuracy: the reference loop trains 10 epochs in a fresh process
(its whole wall time, process start included, and its final test accuracy
are measured); then `main.py --config=configs/fast.py` runs in a fresh
process and we note the wall time, from process start, of the first epoch
whose test accuracy reaches the reference's.
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time


import contenders

DEFAULT_DATA = '/usr/share/datasets/fashion-mnist'
def load(data_dir):
  import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.load_dataset('fashion_mnist', data_dir)


def peak_flops(repeats=5, n=2048, dtype='float32'):
  """Matmul FLOP/s, the machine's practical peak for this work."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype))
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  times = [contenders.timed(lambda: matmul(a).block_until_ready())
           for _ in range(repeats)]
  return 2 * n**3 / min(times)


def train_flops_per_image(batch_size=32):
  """FLOPs of one training step per image, from XLA's cost analysis."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import models  # pylint: disable=g-import-not-at-top
  import optimizers  # pylint: disable=g-import-not-at-top
  import train  # pylint: disable=g-import-not-at-top
  state = train.create_train_state(
      models.create_model('cnn', 10),
      optimizers.create_optimizer('sgd', 0.01, 0.9), (28, 28, 1), 0)
  images = jnp.zeros((batch_size, 28, 28, 1))
  labels = jnp.zeros((batch_size,), jnp.int32)
  compiled = jax.jit(train.train_step).lower(state, images, labels).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost['flops'] / batch_size


def machine_facts(args):
  """Child: the backend, its device, matmul peaks and the CNN's training
  FLOPs, as JSON. The parent never starts JAX itself, so that on a GPU it
  holds no device memory while the contenders run."""
  del args
  import jax  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  n = 2048 if backend == 'cpu' else 8192
  print(json.dumps({
      'backend': backend, 'device': jax.devices()[0].device_kind,
      'device_count': jax.device_count(),
      'peak_flops': peak_flops(n=n),
      'peak_flops_bf16': None if backend == 'cpu' else peak_flops(
          n=n, dtype='bfloat16'),
      'train_flops_per_image': train_flops_per_image()}))


def run_or_exit(command, env=None) -> str:
  """Runs `command` in the repository's root; its output, or exits with the
  end of its errors."""
  proc = subprocess.run(command, cwd=contenders.ROOT, env=env,
                        capture_output=True, text=True)
  if proc.returncode:
    sys.exit(f'{" ".join(command[:4])} failed:\n{proc.stderr[-3000:]}')
  return proc.stdout


def child(mode, args, env=None, **flags) -> dict:
  """Runs this script in a fresh process with --mode=MODE; its last line of
  output, as JSON."""
  out = run_or_exit(
      [sys.executable, os.path.join('bench', 'benchmark.py'), f'--mode={mode}',
       f'--data_dir={args.data_dir}'] + [f'--{k}={v}' for k, v in flags.items()],
      env=env)
  return json.loads(out.splitlines()[-1])


def describe(facts) -> str:
  if facts['backend'] == 'cpu':
    return f'{os.cpu_count()} CPU cores'
  return (f'{facts["device_count"]} x {facts["device"]} ({facts["backend"]}),'
          f' {os.cpu_count()} CPU cores')


def first_step_seconds(kind, data_dir):
  """Wall time from launching a fresh process to its first finished step."""
  if kind == 'trainer':
    args = [sys.executable, 'main.py', '--workdir=' + os.path.join(
        '/tmp', f'bench-first-step-{os.getpid()}'),
            '--config=configs/fashion_mnist.py',
            f'--config.data_dir={data_dir}', '--config.num_train_steps=1']
    pattern = 'First training step done'
  else:
    args = [sys.executable, os.path.join('bench', 'benchmark.py'),
            '--mode=first_step', f'--contender={kind}',
            f'--data_dir={data_dir}']
    pattern = 'FIRST_STEP_DONE'
  start = time.perf_counter()
  proc = subprocess.Popen(args, cwd=contenders.ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  seconds = None
  for line in proc.stdout:
    if pattern in line and seconds is None:
      seconds = time.perf_counter() - start
  proc.wait(timeout=600)
  if kind == 'trainer':
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(args[2].split('=', 1)[1], ignore_errors=True)
  return seconds


def throughput(args):
  """The main table: every contender and batch size, rounds alternating."""
  facts = child('machine_facts', args)
  lineup = KIND_BATCHES['cpu' if facts['backend'] == 'cpu' else 'gpu']
  kinds = [k for k in lineup if args.only is None or k in args.only]
  rates, eval_rates = {}, {}
  for _ in range(args.windows):
    for kind in kinds:
      for batch, (rate, eval_rate, _) in contender_window(
          kind, args, batches=lineup[kind]).items():
        rates.setdefault((kind, batch), []).append(rate)
        eval_rates[(kind, batch)] = eval_rate
  peak, flops = facts['peak_flops'], facts['train_flops_per_image']
  first = {kind: first_step_seconds(kind, args.data_dir) for kind in kinds
           if kind != 'trainer_on_device'}
  median = {key: statistics.median(r) for key, r in rates.items()}
  ref = median.get(('reference', 32))
  rows = []
  for (kind, batch), rate in median.items():
    rows.append({
        'contender': f'{kind} b{batch}', 'train_images_per_s': rate,
        'windows': rates[(kind, batch)],
        'ratio_to_reference': rate / ref if ref else None,
        'percent_of_peak': 100 * rate * flops / peak,
        'eval_images_per_s': eval_rates[(kind, batch)],
        'first_step_s': first.get(kind)})
  lines = [
      f'machine: {describe(facts)}; float32 matmul peak '
      f'{peak / 1e9:.1f} GFLOP/s; CNN training {flops / 1e6:.1f} MFLOP per '
      f'image (XLA cost analysis); median of {args.windows} windows of '
      f'{args.window_images} images; trainer XLA_FLAGS: '
      f'{trainer_xla_flags() or "(none)"}; trainer malloc: freed memory '
      f'kept (host_memory); reference input: {contenders.reference_input()}',
      '',
      '| contender | train images/s | vs reference | % of peak | '
      'eval images/s | process start to first step (s) |',
      '| --- | ---: | ---: | ---: | ---: | ---: |']
  for r in rows:
    ratio = f'{r["ratio_to_reference"]:.2f}x' if ref else '-'
    lines.append(
        f'| {r["contender"]} | {r["train_images_per_s"]:.0f} | {ratio} | '
        f'{r["percent_of_peak"]:.1f} | {r["eval_images_per_s"]:.0f} | '
        f'{_seconds(r["first_step_s"])} |')
  best = {kind: max((r for r in rows if r['contender'].startswith(kind)),
                    key=lambda r: r['train_images_per_s'], default=None)
          for kind in ('trainer', 'torch')}
  lines.append('')
  if best['trainer'] and best['torch']:
    ratio = (best['trainer']['train_images_per_s'] /
             best['torch']['train_images_per_s'])
    lines.append(
        f'best trainer ({best["trainer"]["contender"]}) / best torch '
        f'({best["torch"]["contender"]}): {ratio:.2f}x (target 1.5x)')
  if ref and ('trainer', 32) in median:
    lines.append(f'trainer b32 / reference b32: '
                 f'{median[("trainer", 32)] / ref:.2f}x (target 3x)')
  if 'trainer' in first:
    lines.append(f'trainer process start to first step: '
                 f'{first["trainer"]:.1f} s (target 5 s)')
  report(lines, args.out, {**facts, 'trainer_xla_flags': trainer_xla_flags(),
                           'rows': rows})


def report(lines, out, record=None):
  """Prints a table; with --out, also writes it as OUT.md (and `record` as
  OUT.json)."""
  print('\n'.join(lines))
  if out:
    with open(out + '.md', 'w') as f:
      f.write('\n'.join(lines) + '\n')
    if record is not None:
      with open(out + '.json', 'w') as f:
        json.dump(record, f, indent=2)


def _seconds(value):
  return '-' if value is None else f'{value:.1f}'


# Batch sizes per contender in the throughput table, on CPU and on GPU. On a
# GPU the trainer also runs with the training set on the device.
KIND_BATCHES = {
    'cpu': {'reference': (32,), 'trainer': (32, 128, 512),
            'torch': (32, 128, 512)},
    'gpu': {'reference': (32,), 'trainer': (32, 1024),
            'trainer_on_device': (32, 1024), 'torch': (32, 1024)}}


def trainer_xla_flags() -> str:
  """The XLA_FLAGS main.py runs the trainer with, here."""
  import distributed  # pylint: disable=g-import-not-at-top
  saved = os.environ.get('XLA_FLAGS')
  try:
    distributed.add_default_xla_flags()
    return os.environ.get('XLA_FLAGS', '')
  finally:
    if saved is None:
      os.environ.pop('XLA_FLAGS', None)
    else:
      os.environ['XLA_FLAGS'] = saved


def contender_window(kind, args, xla_flags=None, batches=None,
                     evaluate=True, keep_freed_memory=True,
                     env_extra=None) -> dict:
  """One timed window per batch size of `kind`, in a fresh process: by
  default the trainer with the XLA flags and malloc settings main.py sets,
  the others with XLA's and glibc's defaults (as their users run them).
  {batch: (train images/s, eval images/s or None, page faults per step)}."""
  env = dict(os.environ)
  if xla_flags is not None:
    env['XLA_FLAGS'] = xla_flags
  elif kind.startswith('trainer'):
    env['XLA_FLAGS'] = trainer_xla_flags()
  env.update(env_extra or {})
  batches = batches or KIND_BATCHES['cpu'][kind]
  proc = subprocess.run(
      [sys.executable, os.path.join('bench', 'benchmark.py'),
       '--mode=contender_child', f'--contender={kind}',
       f'--data_dir={args.data_dir}', f'--window_images={args.window_images}',
       f'--warmup_images={args.warmup_images}',
       f'--batches={",".join(map(str, batches))}',
       f'--evaluate={int(evaluate)}',
       f'--keep_freed_memory={int(keep_freed_memory)}'], cwd=contenders.ROOT,
      env=env, capture_output=True, text=True, check=True)
  result = json.loads(proc.stdout.splitlines()[-1])
  return {int(b): tuple(v) for b, v in result.items()}


def contender_child(args):
  """Child of contender_window."""
  if args.contender.startswith('trainer') and args.keep_freed_memory:
    # As main.py sets it.
    import host_memory  # pylint: disable=g-import-not-at-top
    host_memory.keep_freed_memory()
  data = load(args.data_dir)
  result = {}
  for batch in map(int, args.batches.split(',')):
    runner = contenders.make(args.contender, data, batch)
    runner.run(max(2, args.warmup_images // batch))  # Compile, warm up.
    steps = max(1, args.window_images // batch)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rate = steps * batch / contenders.timed(runner.run, steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt -
              faults) / steps
    eval_rate = None
    if args.evaluate:
      runner.evaluate()  # Compile.
      seconds = min(contenders.timed(runner.evaluate) for _ in range(3))
      eval_rate = len(data.test) / seconds
    result[batch] = (rate, eval_rate, faults)
  print(json.dumps(result))


def alternate_windows(runners: dict, args) -> dict:
  """{name: (runner, batch)} -> {name: [images/s per window]}, after a
  warm-up of each, windows alternating between them."""
  for runner, batch in runners.values():
    runner.run(max(2, args.warmup_images // batch))  # Compile, warm up.
  rates = {name: [] for name in runners}
  for _ in range(args.windows):
    for name, (runner, batch) in runners.items():
      steps = max(1, args.window_images // batch)
      rates[name].append(steps * batch / contenders.timed(runner.run, steps))
  return rates


def use_trainer_xla_flags():
  """For modes that time only the trainer, in this process: main.py's XLA
  flags and malloc settings."""
  import distributed  # pylint: disable=g-import-not-at-top
  import host_memory  # pylint: disable=g-import-not-at-top
  distributed.add_default_xla_flags()
  host_memory.keep_freed_memory()


def compute_dtypes(args):
  """Train images/s of each model in float32 and bfloat16 compute, timed in
  alternation like the throughput table."""
  use_trainer_xla_flags()
  data = load(args.data_dir)
  lineup = [(f'{model} b{batch} {dtype}', model, batch, dtype)
            for model, batch in (('cnn', 32), ('cnn', 128), ('resnet20', 128))
            for dtype in ('float32', 'bfloat16')]
  rates = alternate_windows(
      {name: (contenders.make('trainer', data, batch, model=model,
                              model_kwargs={'dtype': dtype}), batch)
       for name, model, batch, dtype in lineup}, args)
  lines = ['| model, batch, compute | train images/s | vs float32 |',
           '| --- | ---: | ---: |']
  for name, model, batch, dtype in lineup:
    base = statistics.median(rates[f'{model} b{batch} float32'])
    rate = statistics.median(rates[name])
    lines.append(f'| {name} | {rate:.0f} | {rate / base:.2f}x |')
  print('\n'.join(lines))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rates, f, indent=2)


def write_image_folder(path, data, num_train, num_test=1000, rgb_size=0):
  """Writes `data`'s first images as data_dir/{train,test}/<class>/N.png
  (or random RGB images of rgb_size, if set), once; returns path."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  done = os.path.join(path, '.complete')
  if os.path.exists(done):
    return path

  def write(item):
    split, i, label = item
    if rgb_size:
      image = np.random.default_rng(i).integers(
          0, 256, (rgb_size, rgb_size, 3), dtype=np.uint8)
    else:
      image = getattr(data, split).images[i % len(getattr(data, split)), ...,
                                          0]
    folder = os.path.join(path, split, f'class{label}')
    Image.fromarray(image).save(os.path.join(folder, f'{i:06d}.png'))

  items = []
  for split, n in (('train', num_train), ('test', num_test)):
    labels = getattr(data, split).labels
    for c in range(10):
      os.makedirs(os.path.join(path, split, f'class{c}'), exist_ok=True)
    items += [(split, i, int(labels[i % len(labels)])) for i in range(n)]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    list(pool.map(write, items))
  open(done, 'w').close()
  return path


def input_modes(args):
  """Train images/s of the trainer's input routes, timed in alternation:
  host batches put each step, sent ahead (prefetch), gathered on the device
  (data_on_device), and decoded from PNG files per batch (streamed)."""
  use_trainer_xla_flags()
  import input_pipeline  # pylint: disable=g-import-not-at-top
  data = load(args.data_dir)
  folder = write_image_folder(f'/tmp/bench-folder-{args.folder_images}',
                              data, args.folder_images)
  streamed = input_pipeline.load_dataset('custom', folder, loading='stream')
  in_memory = input_pipeline.load_dataset('custom', folder, loading='memory')
  lineup = []
  for batch in (32, 128):
    lineup += [
        (f'b{batch} memory, put each step', data, batch,
         {'prefetch_batches': 0}),
        (f'b{batch} memory, 2 batches ahead (default)', data, batch, {}),
        (f'b{batch} memory, data_on_device', data, batch,
         {'data_on_device': True}),
        (f'b{batch} PNG folder decoded into memory', in_memory, batch, {}),
        (f'b{batch} PNG folder streamed (decoded per batch)', streamed, batch,
         {})]
  rates = alternate_windows(
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
  photos = input_pipeline.load_dataset(
      'custom', write_jpeg_folder('/tmp/bench-jpeg-2000', 2000),
      loading='stream', image_size=224)
  loaders = {'28x28 PNG': loader_rates(streamed.train, 128, 60),
             '320x240 JPEG to 224x224': loader_rates(photos.train, 64, 30)}
  print(f'\n| loader alone ({os.cpu_count()} cores) | ' + ' | '.join(
      loaders) + ' |\n| --- | ---: | ---: |')
  for name in loaders['28x28 PNG']:
    print(f'| {name} | ' + ' | '.join(
        f'{rates[name]:.0f} images/s' for rates in loaders.values()) + ' |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'train': rates, 'loaders': loaders}, f, indent=2)


def write_jpeg_folder(path, n):
  """n photo-like 320x240 RGB JPEGs (smooth colour fields) in 4 classes."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  done = os.path.join(path, '.complete')
  if os.path.exists(done):
    return path
  rng = np.random.default_rng(0)
  for split, count in (('train', n), ('test', 8)):
    for i in range(count):
      folder = os.path.join(path, split, f'class{i % 4}')
      os.makedirs(folder, exist_ok=True)
      small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
      Image.fromarray(small).resize((320, 240), Image.BICUBIC).save(
          os.path.join(folder, f'{i:05d}.jpg'), quality=90)
  open(done, 'w').close()
  return path


def loader_rates(split, batch, steps):
  """Images/s of reading an image folder's batches with nothing else
  running: Grain's threads (the trainer's route), one thread, and tf.data's
  parallel map (decoding and resizing in TensorFlow), the alternative the
  issue names. All read the same permuted indices."""
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
  for _ in range(3):
    for name, route in routes.items():
      times[name].append(contenders.timed(route))
  return {name: batch * steps / min(t) for name, t in times.items()}


def peak_memory(args):
  """Peak RSS of reading a generated image folder of 10,000 vs 100,000
  images, streamed and in memory, each in a fresh process."""
  data = load(args.data_dir)
  lines = ['| images on disk | loading | peak RSS (MB) | images read | '
           'seconds |', '| ---: | --- | ---: | ---: | ---: |']
  for n in (10_000, 100_000):
    folder = write_image_folder(f'/tmp/bench-rgb-{n}', data, n, num_test=100,
                                rgb_size=64)
    for loading in ('stream', 'memory'):
      proc = subprocess.run(
          [sys.executable, os.path.join('bench', 'benchmark.py'),
           '--mode=read_child', f'--data_dir={folder}',
           f'--loading={loading}'], cwd=contenders.ROOT, capture_output=True,
          text=True, check=True)
      result = json.loads(proc.stdout.splitlines()[-1])
      lines.append(f'| {n:,} | {loading} | {result["peak_rss_mb"]:.0f} | '
                   f'{result["images"]:,} | {result["seconds"]:.1f} |')
      print(lines[-1], flush=True)
  print('\n'.join(lines))


def read_child(args):
  """Child of peak_memory: loads a folder and reads 100 batches of 128,
  with main.py's malloc settings."""
  import resource  # pylint: disable=g-import-not-at-top
  import host_memory  # pylint: disable=g-import-not-at-top
  import input_pipeline  # pylint: disable=g-import-not-at-top
  host_memory.keep_freed_memory()
  start = time.perf_counter()
  dataset = input_pipeline.load_dataset('custom', args.data_dir,
                                        loading=args.loading)
  count = 0
  for images, _ in input_pipeline.train_batches(
      dataset.train, 128, 0, 0, 100, threads=input_pipeline.READ_THREADS):
    count += len(images)
  print(json.dumps({
      'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      'images': count, 'seconds': time.perf_counter() - start}))


# XLA CPU flags measured against XLA's defaults (--mode=xla_flags).
XLA_FLAG_CANDIDATES = {
    'defaults': '',
    'ynn fusion': '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce',
    'ynn fusion + convolutions': '--xla_cpu_experimental_ynn_fusion_type='
                                 'dot,eltwise,reduce,individual_convolution',
}


def compare_windows(variants: dict, batches, args) -> dict:
  """{name: contender_window keyword arguments} -> {(name, batch): (median
  images/s, median page faults per step, every window's images/s)}; each
  window in a fresh process, rounds alternating A B A B ..., written to
  --json if given."""
  rates, faults = {}, {}
  for _ in range(args.windows):
    for name, kwargs in variants.items():
      for batch, (rate, _, per_step) in contender_window(
          args=args, batches=batches, evaluate=False, **kwargs).items():
        rates.setdefault((name, batch), []).append(rate)
        faults.setdefault((name, batch), []).append(per_step)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({f'{n} b{b}': r for (n, b), r in rates.items()}, f, indent=2)
  return {key: (statistics.median(r), statistics.median(faults[key]), r)
          for key, r in rates.items()}


def xla_flags(args):
  """Trainer images/s under each XLA_FLAGS candidate (XLA reads its flags
  once per process)."""
  batches = (32, 128)
  medians = compare_windows(
      {name: dict(kind='trainer', xla_flags=flags)
       for name, flags in XLA_FLAG_CANDIDATES.items()}, batches, args)
  lines = ['| XLA_FLAGS | b32 images/s | b128 images/s |',
           '| --- | ---: | ---: |']
  for name, flags in XLA_FLAG_CANDIDATES.items():
    cells = []
    for batch in batches:
      rate, base = medians[(name, batch)][0], medians[('defaults', batch)][0]
      cells.append(f'{rate:.0f} ({rate / base:.2f}x)')
    lines.append(f'| {name}: `{flags or "(none)"}` | ' + ' | '.join(cells)
                 + ' |')
  print('\n'.join(lines))


def malloc_settings(args):
  """Images/s and page faults per step with glibc's malloc as it comes and
  set to keep freed memory: the trainer as main.py sets it (host_memory),
  PyTorch through glibc's environment variables."""
  import host_memory  # pylint: disable=g-import-not-at-top
  batches = (32, 128, 512)
  variants = {
      'trainer, glibc defaults': dict(kind='trainer',
                                      keep_freed_memory=False),
      'trainer, freed memory kept (main.py)': dict(kind='trainer'),
      'torch, glibc defaults': dict(kind='torch'),
      'torch, freed memory kept (MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_)':
          dict(kind='torch', env_extra=host_memory.ENVIRONMENT)}
  medians = compare_windows(variants, batches, args)
  lines = ['| contender, malloc | ' + ' | '.join(
      f'b{b} images/s (page faults per step)' for b in batches) + ' |',
           '| --- |' + ' ---: |' * len(batches)]
  for name, kwargs in variants.items():
    cells = []
    for b in batches:
      rate, faults, _ = medians[(name, b)]
      base = medians[(f'{kwargs["kind"]}, glibc defaults', b)][0]
      cells.append(f'{rate:,.0f} ({rate / base:.2f}x; {faults:,.0f})')
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  print('\n'.join(lines))


def resnet50(args):
  """ResNet-50 training in bfloat16 on a synthetic batch: the trainer and
  PyTorch (torchvision), each window in a fresh process, alternating."""
  facts = child('machine_facts', args)
  rates, flops = {}, None
  kinds = [k for k in contenders.RESNET50 if args.only is None or
           k in args.only]
  for _ in range(args.windows):
    for kind in kinds:
      env = dict(os.environ)
      if kind == 'trainer':
        env['XLA_FLAGS'] = trainer_xla_flags()
      result = child('resnet50_child', args, env=env, contender=kind,
                     batches=args.resnet_batch, image_size=args.image_size,
                     steps=args.steps, flops=int(flops is None))
      rates.setdefault(kind, []).append(result['images_per_s'])
      flops = result.get('flops_per_image') or flops
  peak = facts['peak_flops_bf16'] or facts['peak_flops']
  median = {kind: statistics.median(r) for kind, r in rates.items()}
  lines = [
      f'machine: {describe(facts)}; '
      f'{"bfloat16" if facts["peak_flops_bf16"] else "float32"} matmul peak '
      f'{peak / 1e12:.2f} TFLOP/s; ResNet-50 at {args.image_size}x'
      f'{args.image_size}, batch {args.resnet_batch}, bfloat16 compute, '
      f'{flops / 1e9:.1f} GFLOP per training image (XLA cost analysis); '
      f'median of {args.windows} windows of {args.steps} steps', '',
      '| contender | train images/s | vs torch | % of peak |',
      '| --- | ---: | ---: | ---: |']
  for kind, rate in median.items():
    ratio = f'{rate / median["torch"]:.2f}x' if 'torch' in median else '-'
    lines.append(f'| {kind} | {rate:.0f} | {ratio} | '
                 f'{100 * rate * flops / peak:.1f} |')
  report(lines, args.out, {**facts, 'flops_per_image': flops,
                           'windows': rates})


def resnet50_child(args):
  """Child of resnet50: warm-up, then one timed window."""
  if args.contender == 'trainer':
    import host_memory  # pylint: disable=g-import-not-at-top
    host_memory.keep_freed_memory()
  runner = contenders.RESNET50[args.contender](int(args.batches),
                                               args.image_size)
  runner.run(3)  # Compile, warm up.
  seconds = contenders.timed(runner.run, args.steps)
  result = {'images_per_s': args.steps * int(args.batches) / seconds}
  if args.contender == 'trainer' and args.flops:  # Compiles once more.
    result['flops_per_image'] = runner.flops_per_image()
  print(json.dumps(result))


def end_to_end(args):
  """The 10-epoch Fashion-MNIST run as a user runs it, process start to
  exit: the reference loop against main.py (configs/fashion_mnist.py), and
  main.py with the training set on the device."""
  reference, accuracies = timed_reference_epochs(args)
  accuracy = f'{accuracies[-1]:.4f}'
  lines = [f'machine: {describe(child("machine_facts", args))}; reference '
           f'input: {contenders.reference_input()}', '',
           '| run | whole process (s) | final test accuracy | vs reference |',
           '| --- | ---: | ---: | ---: |',
           f'| reference loop, {args.epochs} epochs | {reference:.1f} | '
           f'{accuracy} | 1.00x |']
  print(lines[-1], flush=True)
  for name, extra in (('main.py', []),
                      ('main.py, data_on_device', [
                          '--config.data_on_device=true'])):
    workdir = f'/tmp/bench-e2e-{os.getpid()}'
    start = time.perf_counter()
    run_or_exit([sys.executable, 'main.py', f'--workdir={workdir}',
                 '--config=configs/fashion_mnist.py',
                 f'--config.data_dir={args.data_dir}',
                 f'--config.num_epochs={args.epochs}', *extra])
    seconds = time.perf_counter() - start
    with open(os.path.join(workdir, 'summary.json')) as f:
      accuracy = json.load(f)['test_accuracy']
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(workdir, ignore_errors=True)
    lines.append(f'| {name}, {args.epochs} epochs | {seconds:.1f} | '
                 f'{accuracy:.4f} | {reference / seconds:.2f}x |')
    print(lines[-1], flush=True)
  report(lines, args.out)


def first_step(args):
  """Child process of `first_step_seconds` for the non-trainer contenders."""
  data = load(args.data_dir)
  runner = contenders.make(args.contender, data, 32)
  runner.run(1)
  print('FIRST_STEP_DONE', flush=True)


def reference_epochs(args):
  """Child process: the reference loop for N epochs, test accuracy each."""
  data = load(args.data_dir)
  runner = contenders.make('reference', data, 32)
  steps = len(data.train) // 32
  for epoch in range(1, args.epochs + 1):
    runner.run(steps)
    print(f'EPOCH {epoch} {runner.evaluate():.4f}', flush=True)


def timed_reference_epochs(args):
  """The reference loop's --epochs in a fresh process: (whole process
  seconds, test accuracy after each epoch)."""
  start = time.perf_counter()
  out = run_or_exit([sys.executable, os.path.join('bench', 'benchmark.py'),
                     '--mode=reference_epochs', f'--epochs={args.epochs}',
                     f'--data_dir={args.data_dir}'])
  seconds = time.perf_counter() - start
  return seconds, [float(l.split()[2]) for l in out.splitlines()
                   if l.startswith('EPOCH')]


def time_to_accuracy(args):
  reference_seconds, accuracies = timed_reference_epochs(args)
  target = accuracies[-1]
  print(f'reference: {args.epochs} epochs, whole process {reference_seconds:.1f}'
        f' s, final test accuracy {target:.4f} (per epoch: '
        f'{", ".join(f"{a:.4f}" for a in accuracies)})', flush=True)

  workdir = f'/tmp/bench-tta-{os.getpid()}'
  start = time.perf_counter()
  proc = subprocess.Popen(
      [sys.executable, 'main.py', f'--workdir={workdir}',
       f'--config={args.config}', f'--config.data_dir={args.data_dir}'],
      cwd=contenders.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  reached = None
  # The trainer's end-of-epoch log line (train.end_epoch).
  epoch_re = re.compile(
      r'epoch ([\d.]+) step \d+: .*\btest_accuracy ([\d.]+)')
  for line in proc.stdout:
    match = epoch_re.search(line)
    if match and reached is None and float(match.group(2)) >= target:
      reached = (time.perf_counter() - start, float(match.group(1)),
                 float(match.group(2)))
  proc.wait()
  total = time.perf_counter() - start
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(workdir, ignore_errors=True)
  if reached is None:
    print(f'{args.config}: never reached {target:.4f} (whole run {total:.1f}'
          f' s)')
    return
  seconds, epoch, accuracy = reached
  print(f'{args.config}: test accuracy {accuracy:.4f} >= {target:.4f} after '
        f'epoch {epoch:g}, {seconds:.1f} s from process start (whole run '
        f'{total:.1f} s)')
  print(f'time to reference accuracy: {seconds:.1f} s vs {reference_seconds:.1f}'
        f' s = {reference_seconds / seconds:.2f}x faster (target >= 5x)')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--mode', default='throughput',
                      choices=['throughput', 'tta', 'dtype', 'input',
                               'memory', 'xla_flags', 'malloc', 'resnet50',
                               'end_to_end', 'first_step',
                               'reference_epochs', 'read_child',
                               'contender_child', 'machine_facts',
                               'resnet50_child'])
  parser.add_argument('--data_dir', default=DEFAULT_DATA)
  parser.add_argument('--windows', type=int, default=5)
  parser.add_argument('--window_images', type=int, default=12800)
  parser.add_argument('--warmup_images', type=int, default=3200)
  parser.add_argument('--only', nargs='*', help='contender kinds to run')
  parser.add_argument('--contender', default='reference')
  parser.add_argument('--epochs', type=int, default=10)
  parser.add_argument('--config', default='configs/fast.py')
  parser.add_argument('--json', help='also write the table here')
  parser.add_argument('--out', help='throughput: write the table as '
                      'OUT.md and OUT.json')
  parser.add_argument('--folder_images', type=int, default=10000)
  parser.add_argument('--loading', default='stream')
  parser.add_argument('--batches', help='contender_child: batch sizes, '
                      'comma-separated')
  parser.add_argument('--evaluate', type=int, default=1,
                      help='contender_child: also time evaluation')
  parser.add_argument('--resnet_batch', type=int, default=256)
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--steps', type=int, default=30,
                      help='resnet50: steps per timed window')
  parser.add_argument('--flops', type=int, default=0,
                      help='resnet50_child: also report FLOPs per image')
  parser.add_argument('--keep_freed_memory', type=int, default=1,
                      help='contender_child: the trainer with main.py\'s '
                      'malloc settings')
  args = parser.parse_args()
  os.chdir(contenders.ROOT)
  {'throughput': throughput, 'tta': time_to_accuracy, 'dtype': compute_dtypes,
   'input': input_modes, 'memory': peak_memory, 'xla_flags': xla_flags,
   'malloc': malloc_settings, 'resnet50': resnet50, 'end_to_end': end_to_end,
   'contender_child': contender_child, 'machine_facts': machine_facts,
   'resnet50_child': resnet50_child,
   'first_step': first_step,
   'reference_epochs': reference_epochs, 'read_child': read_child}[
       args.mode](args)


if __name__ == '__main__':
  main()
