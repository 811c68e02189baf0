"""Images/s and page faults per step, with glibc's malloc as it comes and
set to keep freed memory.

The trainer as main.py sets it (runtime.keep_freed_memory, a call inside
the process), PyTorch through glibc's environment variables
(runtime.MALLOC_ENVIRONMENT). malloc's settings hold for the whole process,
so each window runs in a fresh one (windows.compare_windows); ratios are to
the same contender with glibc's defaults.
"""

import common
import windows

BATCHES = (32, 128, 512)


def compare_malloc_settings(args):
  """Times every variant at BATCHES; the table."""
  import runtime  # pylint: disable=g-import-not-at-top
  variants = {
      'trainer, glibc defaults': dict(kind='trainer',
                                      keep_freed_memory=False),
      'trainer, freed memory kept (main.py)': dict(kind='trainer'),
      'torch, glibc defaults': dict(kind='torch'),
      'torch, freed memory kept (MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_)':
          dict(kind='torch', env_extra=runtime.MALLOC_ENVIRONMENT)}
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
