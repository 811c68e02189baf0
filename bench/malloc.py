"""Images/s and page faults per step, with glibc's malloc as it comes and
set to keep freed memory.

The trainer (the CNN and ResNet-20) as main.py sets it
(runtime.keep_freed_memory, a call inside the process) and with only the
heap settings (no mapped blocks, no trimming, but an arena per thread),
PyTorch through glibc's environment variables (runtime.MALLOC_ENVIRONMENT).
malloc's settings hold for the whole process, so each window runs in a
fresh one (windows.compare_windows); ratios are to the same contender with
glibc's defaults.
"""

import argparse

import common
import windows

BATCHES = (32, 128, 512)
# ResNet-20 at its recipe's batch only, in windows of a quarter of
# --window_images: its step is some ten times the CNN's.
RESNET20_BATCHES = (128,)
RESNET20_WINDOW_SHARE = 4


def compare_malloc_settings(args):
  """Times every variant; the table."""
  import runtime  # pylint: disable=g-import-not-at-top
  heap_only = {k: v for k, v in runtime.MALLOC_ENVIRONMENT.items()
               if k != 'MALLOC_ARENA_MAX'}

  def settings(kind):
    return {f'{kind}, glibc defaults': dict(kind=kind,
                                            keep_freed_memory=False),
            f'{kind}, heap kept, an arena per thread': dict(
                kind=kind, keep_freed_memory=False, env_extra=heap_only),
            f'{kind}, freed memory kept (main.py)': dict(kind=kind)}

  cnn = {**settings('trainer'),
         'torch, glibc defaults': dict(kind='torch'),
         'torch, freed memory kept (' + ' '.join(
             f'{k}={v}' for k, v in runtime.MALLOC_ENVIRONMENT.items()) +
         ')': dict(kind='torch', env_extra=runtime.MALLOC_ENVIRONMENT)}
  kinds = common.installed_kinds(sorted({v['kind'] for v in cnn.values()}))
  cnn = {name: kwargs for name, kwargs in cnn.items()
         if kwargs['kind'] in kinds}
  resnet20 = settings('trainer_resnet20')
  short = argparse.Namespace(**{
      **vars(args), 'window_images': max(
          1, args.window_images // RESNET20_WINDOW_SHARE),
      'warmup_images': max(1, args.warmup_images // RESNET20_WINDOW_SHARE),
      'json': None})
  print('\n\n'.join([
      _table(cnn, windows.compare_windows(cnn, BATCHES, args), BATCHES),
      _table(resnet20, windows.compare_windows(resnet20, RESNET20_BATCHES,
                                               short), RESNET20_BATCHES)]))


def _table(variants, medians, batches) -> str:
  lines = ['| contender, malloc | ' + ' | '.join(
      f'b{b} images/s (page faults per step)' for b in batches) + ' |',
           '| --- |' + ' ---: |' * len(batches)]
  for name, kwargs in variants.items():
    cells = []
    for batch in batches:
      rate, faults, _ = medians[(name, batch)]
      base = medians[(f'{kwargs["kind"]}, glibc defaults', batch)][0]
      cells.append(f'{rate:,.0f} ({rate / base:.2f}x; {faults:,.0f})')
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
