"""The main table: train and eval images/s of every contender.

Rounds of one timed window per contender and batch size, the contenders
alternating (A B C A B C ...), each window in a fresh process after warm-up
(windows.py), so that the trainer runs with the XLA flags and malloc
settings main.py sets and the others with XLA's defaults, as their users run
them. Ratios are to the Flax quick-start loop measured in the same
invocation; % of peak counts the CNN's training FLOPs per image against a
measured matmul. Process start to first step is the wall time from
launching a fresh process to its first finished training step: for the
trainer main.py itself (imports, data loading, checkpoint checks,
compilation).
"""

import statistics
import subprocess
import time

import common
import contenders
import windows

# Batch sizes per contender, on CPU and on GPU. On a GPU the trainer also
# runs with the training set on the device.
KIND_BATCHES = {
    'cpu': {'reference': (32,), 'trainer': (32, 128, 512),
            'torch': (32, 128, 512)},
    'gpu': {'reference': (32,), 'trainer': (32, 1024),
            'trainer_on_device': (32, 1024), 'torch': (32, 1024)}}
# What the trainer and the child mode first_step log after the first step.
TRAINER_FIRST_STEP_LINE = 'First training step done'
CHILD_FIRST_STEP_LINE = 'FIRST_STEP_DONE'
# A first-step process that runs longer than this is a failure.
FIRST_STEP_TIMEOUT_SECONDS = 600


def measure_throughput(args):
  """Every contender and batch size, rounds alternating; the table."""
  facts = common.child('machine_facts', args.data_dir)
  lineup = KIND_BATCHES['cpu' if facts['backend'] == 'cpu' else 'gpu']
  kinds = common.installed_kinds(
      [k for k in lineup if args.only is None or k in args.only])
  rates, eval_rates = {}, {}
  for _ in range(args.windows):
    for kind in kinds:
      for batch, (rate, eval_rate, _) in windows.contender_window(
          kind, args, batches=lineup[kind]).items():
        rates.setdefault((kind, batch), []).append(rate)
        eval_rates[(kind, batch)] = eval_rate
  first = {kind: first_step_seconds(kind, args.data_dir) for kind in kinds
           if kind != 'trainer_on_device'}
  median = {key: statistics.median(r) for key, r in rates.items()}
  ref = median.get(('reference', contenders.QUICK_START_BATCH_SIZE))
  peak, flops = facts['peak_flops'], facts['train_flops_per_image']
  rows = [{'contender': f'{kind} b{batch}', 'train_images_per_s': rate,
           'windows': rates[(kind, batch)],
           'ratio_to_reference': rate / ref if ref else None,
           'percent_of_peak': 100 * rate * flops / peak,
           'eval_images_per_s': eval_rates[(kind, batch)],
           'first_step_s': first.get(kind)}
          for (kind, batch), rate in median.items()]
  xla_flags = common.trainer_xla_flags()
  lines = [
      f'machine: {common.describe(facts)}; float32 matmul peak '
      f'{peak / 1e9:.1f} GFLOP/s; CNN training {flops / 1e6:.1f} MFLOP per '
      f'image (XLA cost analysis); median of {args.windows} windows of '
      f'{args.window_images} images; trainer XLA_FLAGS: '
      f'{xla_flags or "(none)"}; trainer malloc: freed memory kept '
      f'(runtime.py); reference input: {contenders.reference_input()}',
      '',
      '| contender | train images/s | vs reference | % of peak | '
      'eval images/s | process start to first step (s) |',
      '| --- | ---: | ---: | ---: | ---: | ---: |']
  for r in rows:
    ratio = f'{r["ratio_to_reference"]:.2f}x' if ref else '-'
    lines.append(
        f'| {r["contender"]} | {r["train_images_per_s"]:.0f} | {ratio} | '
        f'{r["percent_of_peak"]:.1f} | {r["eval_images_per_s"]:.0f} | '
        f'{common.format_seconds(r["first_step_s"])} |')
  lines += [''] + summary_lines(rows, median, ref, first)
  common.report(lines, args.out, {**facts, 'trainer_xla_flags': xla_flags,
                                  'rows': rows})


def summary_lines(rows, median, ref, first) -> list[str]:
  """The trainer's ratios to the others and its start-up time."""
  best = {kind: max((r for r in rows if r['contender'].startswith(kind)),
                    key=lambda r: r['train_images_per_s'], default=None)
          for kind in ('trainer', 'torch')}
  lines = []
  if best['trainer'] and best['torch']:
    ratio = (best['trainer']['train_images_per_s'] /
             best['torch']['train_images_per_s'])
    lines.append(
        f'best trainer ({best["trainer"]["contender"]}) / best torch '
        f'({best["torch"]["contender"]}): {ratio:.2f}x')
  batch = contenders.QUICK_START_BATCH_SIZE
  if ref and ('trainer', batch) in median:
    lines.append(f'trainer b{batch} / reference b{batch}: '
                 f'{median[("trainer", batch)] / ref:.2f}x')
  if 'trainer' in first:
    lines.append(f'trainer process start to first step: '
                 f'{common.format_seconds(first["trainer"])} s')
  return lines


def first_step_seconds(kind, data_dir):
  """Wall time from launching a fresh process to its first finished step;
  None if it never logs one."""
  with common.scratch_workdir('first-step') as workdir:
    if kind == 'trainer':
      command = common.main_command(workdir, 'configs/fashion_mnist.py',
                                    data_dir, '--config.num_train_steps=1')
      pattern = TRAINER_FIRST_STEP_LINE
    else:
      command = common.benchmark_command('first_step', data_dir,
                                         contender=kind)
      pattern = CHILD_FIRST_STEP_LINE
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=contenders.ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seconds = None
    for line in proc.stdout:
      if pattern in line and seconds is None:
        seconds = time.perf_counter() - start
    proc.wait(timeout=FIRST_STEP_TIMEOUT_SECONDS)
  return seconds


def first_step(args):
  """Child mode of first_step_seconds for the contenders but the trainer."""
  data = common.load(args.data_dir)
  runner = contenders.make(args.contender, data,
                           contenders.QUICK_START_BATCH_SIZE)
  runner.run(1)
  print(CHILD_FIRST_STEP_LINE, flush=True)
