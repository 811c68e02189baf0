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

import common
import windows

BATCHES = (32, 128, 512)


def compare_malloc_settings(args):
  """Times every variant at BATCHES; the table."""
  import runtime  # pylint: disable=g-import-not-at-top
  heap_only = {k: v for k, v in runtime.MALLOC_ENVIRONMENT.items()
               if k != 'MALLOC_ARENA_MAX'}
  variants = {}
  for kind in ('trainer', 'trainer_resnet20'):
    variants.update({
        f'{kind}, glibc defaults': dict(kind=kind, keep_freed_memory=False),
        f'{kind}, heap kept, an arena per thread': dict(
            kind=kind, keep_freed_memory=False, env_extra=heap_only),
        f'{kind}, freed memory kept (main.py)': dict(kind=kind)})
  variants.update({
      'torch, glibc defaults': dict(kind='torch'),
      'torch, freed memory kept (' + ' '.join(
          f'{k}={v}' for k, v in runtime.MALLOC_ENVIRONMENT.items()) + ')':
          dict(kind='torch', env_extra=runtime.MALLOC_ENVIRONMENT)})
  kinds = common.installed_kinds(sorted({v['kind'] for v in variants.values()}))
  variants = {name: kwargs for name, kwargs in variants.items()
              if kwargs['kind'] in kinds}
  medians = windows.compare_windows(variants, BATCHES, args)
  lines = ['| contender, malloc | ' + ' | '.join(
      f'b{b} images/s (page faults per step)' for b in BATCHES) + ' |',
           '| --- |' + ' ---: |' * len(BATCHES)]
  for name, kwargs in variants.items():
    cells = []
    for batch in BATCHES:
      rate, faults, _ = medians[(name, batch)]
      base = medians[(f'{kwargs["kind"]}, glibc defaults', batch)][0]
      cells.append(f'{rate:,.0f} ({rate / base:.2f}x; {faults:,.0f})')
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  print('\n'.join(lines))
