"""Runs a grid (or list) of config overrides as real training runs.

  python sweep.py --workdir=W --config=configs/fashion_mnist.py \\
      --sweep=learning_rate=0.01,0.05 --sweep=batch_size=32,64 [--parallel=2]

Each trial is `main.py` in its own process and workdir `W/<trial name>/`, so
it leaves everything a single run leaves and resumes like one. Running the
same command again skips finished trials and resumes interrupted ones; new
values add trials and keep the old; other fixed values or another base config
are refused (each trial's config.json says what it ran with). Every
trial's config is checked against the config rules before anything is
created. Paths are relative to where the command runs. Results: W/sweep.csv,
W/sweep.md (best first) and W/sweep.png. This file defines flags only; see
sweep_runner.py (the trials) and sweep_report.py (the results).
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

import cli
import runtime
import sweep_runner

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Sweep folder; each trial gets a '
                    'subfolder named after its overrides.')
config_flags.DEFINE_config_file(
    'config', None, 'Base config file; --config.KEY=VALUE fixes a value for '
    'every trial.', lock_config=True)
flags.DEFINE_multi_string('sweep', [], 'KEY=V1,V2,...: a config key (or '
                          'model_kwargs.KEY) and its values; several --sweep '
                          'give the cross product.')
flags.DEFINE_string('sweep_file', None, 'Python file whose get_sweep() '
                    'returns a list of {key: value} override dicts.')
flags.DEFINE_integer('parallel', 1, 'Trials run at a time, each its own '
                     'process.')
flags.DEFINE_list('visible_devices', [], 'GPU ids to spread trials over: '
                  'trial slot i sees device i mod len (CUDA_VISIBLE_DEVICES).')
flags.DEFINE_boolean('retry_failed', False, 'Run failed trials again.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; accepted: flags only')
  runtime.setup(log=False)  # The trials' processes inherit XLA_FLAGS.
  # Every trial gets the fixed values, --config.model_kwargs.KEY ones too
  # (cli took those out of argv and has applied them to FLAGS.config).
  fixed = {**config_flags.get_override_values(FLAGS['config']),
           **cli.kwargs_overrides()}
  sys.exit(sweep_runner.sweep_and_report(
      FLAGS.workdir, FLAGS.config, FLAGS['config'].config_filename, fixed,
      FLAGS.sweep, FLAGS.sweep_file, parallel=FLAGS.parallel,
      visible_devices=FLAGS.visible_devices,
      retry_failed=FLAGS.retry_failed, verbose=FLAGS.verbosity >= 1))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
