"""ResNet-50 training in bfloat16 on a synthetic batch, for a GPU.

The trainer and PyTorch (torchvision), each window in a fresh process,
alternating; images/s and % of the measured bfloat16 matmul peak (float32 on
a CPU), with the trainer's training FLOPs per image from XLA's cost
analysis.
"""

import json
import statistics

import common
import contenders

# Steps before the timed window: the first compiles.
WARMUP_STEPS = 3


def measure_resnet50(args):
  """Every contender's windows, alternating; the table."""
  facts = common.child('machine_facts', args.data_dir)
  rates, flops = {}, None
  kinds = common.installed_kinds(
      [k for k in contenders.RESNET50 if args.only is None or k in args.only],
      contenders.RESNET50_NEEDS)
  for _ in range(args.windows):
    for kind in kinds:
      # Each child sets itself up (resnet50_child) from the user's
      # environment.
      result = common.child(
          'resnet50_child', args.data_dir, contender=kind,
          batches=args.resnet_batch, image_size=args.image_size,
          steps=args.steps, flops=int(flops is None))
      rates.setdefault(kind, []).append(result['images_per_s'])
      flops = result.get('flops_per_image') or flops
  peak = facts['peak_flops_bf16'] or facts['peak_flops']
  median = {kind: statistics.median(r) for kind, r in rates.items()}
  flops_text = 'no' if flops is None else f'{flops / 1e9:.1f}'
  lines = [
      f'machine: {common.describe(facts)}; '
      f'{"bfloat16" if facts["peak_flops_bf16"] else "float32"} matmul peak '
      f'{peak / 1e12:.2f} TFLOP/s; ResNet-50 at {args.image_size}x'
      f'{args.image_size}, batch {args.resnet_batch}, bfloat16 compute, '
      f'{flops_text} GFLOP per training image (XLA cost analysis); '
      f'median of {args.windows} windows of {args.steps} steps', '',
      '| contender | train images/s | vs torch | % of peak |',
      '| --- | ---: | ---: | ---: |']
  for kind, rate in median.items():
    ratio = f'{rate / median["torch"]:.2f}x' if 'torch' in median else '-'
    percent = '-' if flops is None else f'{100 * rate * flops / peak:.1f}'
    lines.append(f'| {kind} | {rate:.0f} | {ratio} | {percent} |')
  common.report(lines, args.out, {**facts, 'flops_per_image': flops,
                                  'windows': rates})


def resnet50_child(args):
  """Child mode of measure_resnet50: warm-up, then one timed window of
  --steps, as JSON; the trainer with main.py's set-up."""
  if args.contender == 'trainer':
    import runtime  # pylint: disable=g-import-not-at-top
    runtime.setup(log=False)
  batch = int(args.batches)
  runner = contenders.RESNET50[args.contender](batch, args.image_size)
  runner.run(WARMUP_STEPS)
  seconds = contenders.timed(runner.run, args.steps)
  result = {'images_per_s': args.steps * batch / seconds}
  if args.contender == 'trainer' and args.flops:  # Compiles once more.
    result['flops_per_image'] = runner.flops_per_image()
  print(json.dumps(result))
