"""The trainer's images/s under each candidate XLA_FLAGS.

XLA reads its flags once per process, so each window runs in a fresh one
(windows.compare_windows), with main.py's malloc settings; ratios are to
XLA's defaults.
"""

import windows

# XLA CPU flags measured against XLA's defaults.
XLA_FLAG_CANDIDATES = {
    'defaults': '',
    'ynn fusion': '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce',
    'ynn fusion + convolutions': '--xla_cpu_experimental_ynn_fusion_type='
                                 'dot,eltwise,reduce,individual_convolution',
}
BATCHES = (32, 128)


def compare_xla_flags(args):
  """Times every candidate at BATCHES; the table."""
  medians = windows.compare_windows(
      {name: dict(kind='trainer', xla_flags=flags)
       for name, flags in XLA_FLAG_CANDIDATES.items()}, BATCHES, args)
  lines = ['| XLA_FLAGS | ' + ' | '.join(f'b{b} images/s' for b in BATCHES)
           + ' |', '| --- |' + ' ---: |' * len(BATCHES)]
  for name, flags in XLA_FLAG_CANDIDATES.items():
    cells = []
    for batch in BATCHES:
      rate, base = medians[(name, batch)][0], medians[('defaults', batch)][0]
      cells.append(f'{rate:.0f} ({rate / base:.2f}x)')
    lines.append(f'| {name}: `{flags or "(none)"}` | ' + ' | '.join(cells)
                 + ' |')
  print('\n'.join(lines))
