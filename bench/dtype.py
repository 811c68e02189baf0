"""Train images/s of each model in float32 and bfloat16 compute.

The trainer in this process with main.py's set-up, timed in alternation
(windows.alternate_windows); ratios are to the same model and batch in
float32. Parameters, optimizer state and the loss are float32 either way.
"""

import statistics

import common
import contenders
import windows

# (model, batch size) pairs, each timed in every compute dtype.
MODELS = (('cnn', 32), ('cnn', 128), ('resnet20', 128))
DTYPES = ('float32', 'bfloat16')


def compare_dtypes(args):
  """Times every model and dtype; the table."""
  import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup(log=False)
  data = common.load(args.data_dir)
  lineup = [(f'{model} b{batch} {dtype}', model, batch, dtype)
            for model, batch in MODELS for dtype in DTYPES]
  rates = windows.alternate_windows(
      {name: (contenders.make('trainer', data, batch, model=model,
                              model_kwargs={'dtype': dtype}), batch)
       for name, model, batch, dtype in lineup}, args)
  lines = ['| model, batch, compute | train images/s | vs float32 |',
           '| --- | ---: | ---: |']
  for name, model, batch, _ in lineup:
    base = statistics.median(rates[f'{model} b{batch} float32'])
    rate = statistics.median(rates[name])
    lines.append(f'| {name} | {rate:.0f} | {rate / base:.2f}x |')
  print('\n'.join(lines))
  common.write_json(args.json, rates)
