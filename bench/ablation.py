"""What each addition to the ResNet-20 recipe buys, in short runs.

configs/fashion_mnist_resnet.py (ResNet-20, SGD with momentum, warm-up +
cosine, weight decay) shortened to EPOCHS epochs, a tenth of the training
images held out for validation, run by main.py once per row of STEPS; each
row adds its overrides to the row above's. The table gives each run's best
validation accuracy, that checkpoint's test accuracy, the change from the
row above, and the run's wall time. Short runs undersell regularizers that
pay off late (RandAugment, mixup, CutMix, erasing): the table says what
they cost or buy in EPOCHS epochs, not in a full schedule. The EMA's decay
is scaled to the short run (0.99 for the recipe's 0.999).
"""

import json
import os
import shlex
import sys
import time

import common

EPOCHS = 2
CONFIG = 'configs/fashion_mnist_resnet.py'
# (row, overrides added to the row above's).
STEPS = (
    ('no augmentation, no smoothing, no EMA',
     {'augment': 'none', 'label_smoothing': 0.0, 'ema_decay': 0.0,
      'eval_with_ema': False}),
    ('+ crop_flip', {'augment': 'crop_flip'}),
    # The recipe's EMA 0.999 averages about its last 1000 of 14,000 updates;
    # 0.99 (100) keeps that share of these 844. With 0.999 the EMA would
    # still be the mean of every update since initialization here.
    ('+ label smoothing 0.1, EMA 0.99',
     {'label_smoothing': 0.1, 'ema_decay': 0.99, 'eval_with_ema': True}),
    ('+ random_erasing', {'augment': 'crop_flip,random_erasing'}),
    ('+ randaugment, mixup, cutmix',
     {'augment': 'crop_flip,randaugment,mixup,cutmix,random_erasing'}),
)


def measure_ablation(args):
  """Runs every row in order; prints (with --out, writes) the table."""
  rows, overrides = [], {}
  with common.scratch_workdir('ablation') as scratch:
    for i, (name, added) in enumerate(STEPS):
      overrides.update(added)
      workdir = os.path.join(scratch, str(i))
      start = time.monotonic()
      common.run_or_exit(common.main_command(
          workdir, CONFIG, args.data_dir, f'--config.num_epochs={EPOCHS}',
          '--config.validation_fraction=0.1',
          *(f'--config.{k}={v}' for k, v in overrides.items())))
      with open(os.path.join(workdir, 'summary.json')) as f:
        summary = json.load(f)
      rows.append((name, summary['best_validation_accuracy'],
                   summary['best_test_accuracy'], time.monotonic() - start))
  facts = common.child('machine_facts', args.data_dir)
  lines = [
      f'machine: {common.describe(facts)}, no GPU. {CONFIG} for {EPOCHS} '
      f'epochs, validation: 10% of the training images; each row adds to '
      f'the one above.', '',
      '| recipe | best validation accuracy | its test accuracy | change '
      '(validation) | wall time |', '| --- | ---: | ---: | ---: | ---: |']
  previous = None
  for name, validation, test, seconds in rows:
    change = '' if previous is None else f'{validation - previous:+.4f}'
    lines.append(f'| {name} | {validation:.4f} | {test:.4f} | {change} | '
                 f'{seconds / 60:.1f} min |')
    previous = validation
  lines += ['', f'Command: `{shlex.join(["python", *sys.argv])}`.']
  common.report(lines, args.out)
