"""Timed windows: the unit every throughput comparison is made of.

A window trains the same number of images after a warm-up (compilation).
`contender_window` runs one per batch size in a fresh process (the child
mode `contender_child`), with the XLA flags and malloc settings of its
variant: XLA reads XLA_FLAGS once, when its backends start, and malloc's
settings hold for the whole process, so comparing them takes one process
each. `compare_windows` alternates such processes between the variants (A B
A B ...), so that drift of the machine hits all alike; `alternate_windows`
does the same in this process, for variants that differ only in what they
build. Tables give the median window.
"""

import json
import os
import resource
import statistics

import common
import contenders

# Steps of the warm-up at the least, whatever --warmup_images says: the
# first compiles, the second runs the compiled program once more.
MIN_WARMUP_STEPS = 2
# Evaluation passes over the test set; the fastest is reported.
EVAL_REPEATS = 3


def warm_up(runner, batch, warmup_images):
  """Compiles and warms up `runner`."""
  runner.run(max(MIN_WARMUP_STEPS, warmup_images // batch))


def window_steps(batch, window_images) -> int:
  """Steps of one window: --window_images, in whole batches."""
  return max(1, window_images // batch)


def window_rate(runner, batch, window_images) -> float:
  """Images/s of one timed window of `runner`."""
  steps = window_steps(batch, window_images)
  return steps * batch / contenders.timed(runner.run, steps)


def contender_window(kind, args, batches, xla_flags=None, evaluate=True,
                     keep_freed_memory=True, env_extra=None) -> dict:
  """One timed window per batch size of `kind`, in a fresh process.

  By default the trainer runs with the XLA flags and malloc settings
  main.py sets, the others with XLA's and glibc's defaults (as their users
  run them).

  Args:
    kind: a contender (contenders.CONTENDERS).
    args: the flags (data_dir, window_images, warmup_images).
    batches: the batch sizes.
    xla_flags: XLA_FLAGS of the child instead of the default for `kind`.
    evaluate: also time evaluation.
    keep_freed_memory: the trainer with main.py's malloc settings.
    env_extra: more environment variables of the child.

  Returns:
    {batch: (train images/s, eval images/s or None, page faults per step)}.
  """
  env = dict(os.environ)
  if xla_flags is not None:
    env['XLA_FLAGS'] = xla_flags
  elif kind.startswith('trainer'):
    env['XLA_FLAGS'] = common.trainer_xla_flags()
  env.update(env_extra or {})
  result = common.child(
      'contender_child', args.data_dir, env=env, contender=kind,
      window_images=args.window_images, warmup_images=args.warmup_images,
      batches=','.join(map(str, batches)), evaluate=int(evaluate),
      keep_freed_memory=int(keep_freed_memory))
  return {int(b): tuple(v) for b, v in result.items()}


def contender_child(args):
  """Child mode of contender_window: warm-up and one window per batch size,
  as JSON."""
  if args.contender.startswith('trainer') and args.keep_freed_memory:
    # main.py's malloc setting; its XLA flags came with the environment
    # (contender_window chose them).
    import runtime  # pylint: disable=g-import-not-at-top
    runtime.keep_freed_memory()
  data = common.load(args.data_dir)
  result = {}
  for batch in map(int, args.batches.split(',')):
    runner = contenders.make(args.contender, data, batch)
    warm_up(runner, batch, args.warmup_images)
    steps = window_steps(batch, args.window_images)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rate = window_rate(runner, batch, args.window_images)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt -
              faults) / steps
    eval_rate = None
    if args.evaluate:
      runner.evaluate()  # Compile.
      seconds = min(contenders.timed(runner.evaluate)
                    for _ in range(EVAL_REPEATS))
      eval_rate = len(data.test) / seconds
    result[batch] = (rate, eval_rate, faults)
  print(json.dumps(result))


def alternate_windows(runners: dict, args) -> dict:
  """{name: (runner, batch)} -> {name: [images/s per window]}, after a
  warm-up of each, windows alternating between them in this process."""
  for runner, batch in runners.values():
    warm_up(runner, batch, args.warmup_images)
  rates = {name: [] for name in runners}
  for _ in range(args.windows):
    for name, (runner, batch) in runners.items():
      rates[name].append(window_rate(runner, batch, args.window_images))
  return rates


def compare_windows(variants: dict, batches, args) -> dict:
  """Windows of each variant in fresh processes, rounds alternating.

  Args:
    variants: {name: contender_window keyword arguments}.
    batches: the batch sizes of every variant.
    args: the flags (windows, json and contender_window's).

  Returns:
    {(name, batch): (median images/s, median page faults per step, every
    window's images/s)}; every window is also written to --json if given.
  """
  rates, faults = {}, {}
  for _ in range(args.windows):
    for name, kwargs in variants.items():
      for batch, (rate, _, per_step) in contender_window(
          args=args, batches=batches, evaluate=False, **kwargs).items():
        rates.setdefault((name, batch), []).append(rate)
        faults.setdefault((name, batch), []).append(per_step)
  common.write_json(args.json, {f'{n} b{b}': r for (n, b), r in rates.items()})
  return {key: (statistics.median(r), statistics.median(faults[key]), r)
          for key, r in rates.items()}
