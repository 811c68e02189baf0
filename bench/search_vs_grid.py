"""A TPE search with median pruning against a grid, 16 trials each.

Both tune the quick-start CNN (configs/fashion_mnist.py: SGD with momentum
0.9) on the Fashion-MNIST IDX files for EPOCHS epochs a trial, a tenth of
the training images held out for validation, over learning rate, weight
decay and batch size: the grid GRID (4 x 2 x 2), the search SPACE
(`sweep.py --search=tpe --pruner=median`, Optuna's defaults: 10 random
start-up trials, the median pruner after 5 finished ones). Each sweep is
`sweep.py` in a fresh process, one trial at a time, one after the other.
The table gives each one's best validation accuracy (the objective), the
test accuracy of that trial's best checkpoint, trials finished and pruned,
and the sweep's wall time.
"""

import csv
import os
import shlex
import subprocess
import sys
import time

import common

EPOCHS = 3
TRIALS = 16
GRID = ('learning_rate=0.003,0.01,0.03,0.1', 'weight_decay=0,0.0005',
        'batch_size=32,128')
SPACE = ('learning_rate=loguniform(0.001,0.3)',
         'weight_decay=loguniform(1e-6,1e-2)',
         'batch_size=choice(32,64,128)')


def sweep_command(workdir, data_dir, *extra):
  return [sys.executable, 'sweep.py', f'--workdir={workdir}',
          '--config=configs/fashion_mnist.py', f'--config.data_dir={data_dir}',
          f'--config.num_epochs={EPOCHS}', '--config.validation_fraction=0.1',
          *extra]


def run(command) -> float:
  """Wall seconds of `command`; exits if it fails."""
  start = time.monotonic()
  result = subprocess.run(command, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  if result.returncode:
    sys.exit(f'{shlex.join(command)} exited {result.returncode}: '
             f'{result.stderr[-2000:]}')
  return time.monotonic() - start


def best_row(workdir):
  with open(os.path.join(workdir, 'sweep.csv')) as f:
    rows = list(csv.DictReader(f))
  done = [r for r in rows if r['status'] == 'done']
  best = max(done, key=lambda r: float(r['best_validation_accuracy']))
  return best, len(done), sum(r['status'] == 'pruned' for r in rows)


def compare_search_and_grid(args):
  """Runs the grid, then the search; prints (with --out, writes) the
  table."""
  results = {}
  with common.scratch_workdir('search') as scratch:
    for name, extra in (
        ('grid', [f'--sweep={g}' for g in GRID]),
        ('TPE + median pruning', ['--search=tpe', '--pruner=median',
                                  f'--n_trials={TRIALS}',
                                  *(f'--space={s}' for s in SPACE)])):
      workdir = os.path.join(scratch, name.split()[0].lower())
      seconds = run(sweep_command(workdir, args.data_dir, *extra))
      results[name] = (*best_row(workdir), seconds)
  facts = common.child('machine_facts', args.data_dir)
  lines = [
      f'machine: {common.describe(facts)}, no GPU. The CNN of '
      f'configs/fashion_mnist.py, {EPOCHS} epochs a trial, {TRIALS} trials, '
      f'validation: 10% of the training images; trials one at a time.', '',
      '| sweep | best validation accuracy | its test accuracy | its '
      'learning rate, weight decay, batch size | finished | pruned | wall '
      'time |', '| --- | ---: | ---: | --- | ---: | ---: | ---: |']
  for name, (best, done, pruned, seconds) in results.items():
    lines.append(
        f'| {name} | {float(best["best_validation_accuracy"]):.4f} | '
        f'{float(best["best_test_accuracy"]):.4f} | '
        f'{float(best["learning_rate"]):.3g}, '
        f'{float(best["weight_decay"]):.3g}, {best["batch_size"]} | {done} | '
        f'{pruned} | {common.format_seconds(seconds / 60)} min |')
  lines += ['', f'Grid: {" ".join(f"--sweep={g}" for g in GRID)}. Search: '
            f'{" ".join(f"--space={s}" for s in SPACE)}.', '',
            f'Command: `{shlex.join(["python", *sys.argv])}`.']
  common.report(lines, args.out)
