"""Runs a grid (or list) of config overrides as real training runs.

  python sweep.py --workdir=W --config=configs/fashion_mnist.py \\
      --sweep=learning_rate=0.01,0.05 --sweep=batch_size=32,64 [--parallel=2]

  python sweep.py --workdir=W --config=configs/fashion_mnist.py \\
      --search=tpe --n_trials=16 --pruner=median \\
      --space=learning_rate=loguniform(1e-3,0.3) --space=batch_size=choice(32,64)

Each trial is `main.py` in its own process and workdir `W/<trial name>/`, so
it leaves everything a single run leaves and resumes like one. Running the
same command again skips finished trials and resumes interrupted ones; new
values add trials and keep the old; other fixed values or another base config
are refused (each trial's config.json says what it ran with). Every
trial's config is checked against the config rules before anything is
created. Paths are relative to where the command runs. Results: W/sweep.csv,
W/sweep.md (best first) and W/sweep.png. With --search, Optuna samples the
trials (W/trial_NNN/) into a study in W/study.journal that every worker
running the same command shares (search.py). This file defines flags only;
see sweep_runner.py (the trials), search.py (searches) and sweep_report.py
(the results).
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

import os

import cli
import runtime
import search
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
flags.DEFINE_enum('search', None, list(search.SEARCHES), 'Sample --n_trials '
                  'trials from --space with Optuna\'s sampler (random or '
                  'TPE) instead of a grid.')
flags.DEFINE_multi_string('space', [], 'KEY=DIST, DIST one of loguniform(a,b)'
                          ', uniform(a,b), int(a,b), choice(v1,v2,...).')
flags.DEFINE_integer('n_trials', 16, 'A search\'s total trials, over every '
                     'worker of its study.')
flags.DEFINE_enum('pruner', 'none', list(search.PRUNERS), 'Stop trials whose '
                  'per-epoch selection accuracy trails (Optuna\'s pruners).')
flags.DEFINE_string('storage', '', 'An Optuna RDB URL for the study (e.g. '
                    'postgresql://...); default: W/study.journal.')
flags.DEFINE_float('lease_seconds', 60, 'A searched trial whose worker has '
                   'not renewed its lease for this long is resumed by '
                   'another.')
flags.DEFINE_integer('array_index', None, 'Run only this trial slot (0-based, '
                     'the sweep table\'s order); default: $SLURM_ARRAY_TASK_ID '
                     'when set.')
flags.DEFINE_string('best_config', '', 'Write the best trial\'s config to '
                    'this file (a search), for main.py --config.')
flags.DEFINE_integer('search_seed', 0, 'Seeds the sampler (with each trial\'s '
                     'number).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; accepted: flags only')
  runtime.setup(log=False)  # The trials' processes inherit XLA_FLAGS.
  # Every trial gets the fixed values, --config.model_kwargs.KEY ones too
  # (cli took those out of argv and has applied them to FLAGS.config).
  fixed = {**config_flags.get_override_values(FLAGS['config']),
           **cli.kwargs_overrides()}
  array_index = FLAGS.array_index
  if array_index is None and os.environ.get('SLURM_ARRAY_TASK_ID'):
    try:
      array_index = int(os.environ['SLURM_ARRAY_TASK_ID'])
    except ValueError:
      cli.fail(f'SLURM_ARRAY_TASK_ID={os.environ["SLURM_ARRAY_TASK_ID"]!r};'
               f' accepted: an integer')
  if array_index is not None and array_index < 0:
    cli.fail(f'--array_index={array_index}; accepted: an integer >= 0')
  if FLAGS.search is None:
    if FLAGS.space:
      cli.fail('--space needs --search=random or --search=tpe; accepted: '
               '--sweep/--sweep_file for a grid')
    sys.exit(sweep_runner.sweep_and_report(
        FLAGS.workdir, FLAGS.config, FLAGS['config'].config_filename, fixed,
        FLAGS.sweep, FLAGS.sweep_file, parallel=FLAGS.parallel,
        visible_devices=FLAGS.visible_devices,
        retry_failed=FLAGS.retry_failed, verbose=FLAGS.verbosity >= 1,
        array_index=array_index))
  if FLAGS.sweep or FLAGS.sweep_file:
    cli.fail('--search samples from --space; accepted: --search with '
             '--space, or --sweep/--sweep_file (a grid) without --search')
  sys.exit(search.search_and_report(
      FLAGS.workdir, FLAGS.config, FLAGS['config'].config_filename, fixed,
      FLAGS.space, search.Options(
          search=FLAGS.search, n_trials=FLAGS.n_trials, pruner=FLAGS.pruner,
          storage=FLAGS.storage, lease_seconds=FLAGS.lease_seconds,
          parallel=FLAGS.parallel,
          array_index=-1 if array_index is None else array_index,
          seed=FLAGS.search_seed, visible_devices=FLAGS.visible_devices),
      best_config=FLAGS.best_config, verbose=FLAGS.verbosity >= 1))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
