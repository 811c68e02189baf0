"""Does reweighting or resampling help a rare class? Per-class test recall.

An imbalanced three-class task from Fashion-MNIST: CLASSES (T-shirt/top,
Shirt, Pullover, which the CNN confuses with one another), relabelled
0..2, with the first TRAIN_COUNTS training images of each in file order,
so Pullover is 10x rarer than the others; tested on all 3,000 test images
of the three (balanced, 1,000 each). The quick-start CNN (configs/default.py:
SGD momentum 0.9, learning rate 0.01, batch 32) trains EPOCHS epochs with
each method of METHODS: plain, `class_weights=balanced` (each example's
loss times N / (classes * its class's count)) and `sampling=balanced`
(batches drawn with replacement, every class equally likely), for each
seed of SEEDS. Every run is main.py in a fresh process, as a user runs it,
then `main.py --mode=eval --checkpoint=latest`, whose eval.json confusion
matrix gives each class's recall; the task is an IDX folder written to a
scratch directory.
"""

import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

import common
import transfer

# Fashion-MNIST's labels: T-shirt/top, Shirt, Pullover; relabelled 0, 1, 2.
CLASSES = (0, 6, 2)
TRAIN_COUNTS = (2000, 2000, 200)
EPOCHS = 3
SEEDS = (0, 1, 2)
# dataset=custom: the classes are named 0..2, not after Fashion-MNIST's
# first three. No validation split, and the last checkpoint is scored, so
# nothing is chosen on the test set.
COMMON_FLAGS = ('--config.dataset=custom', f'--config.num_epochs={EPOCHS}',
                '--config.eval_batch_size=1000',
                '--config.checkpoint_every_steps=100000',
                '--config.validation_fraction=0')
METHODS = (
    ('plain', ()),
    ('class_weights=balanced', ('--config.class_weights=balanced',)),
    ('sampling=balanced', ('--config.sampling=balanced',)),
)


def imbalanced_subset(images, labels, counts):
  """The first counts[c] examples (in file order) of each label c, kept in
  file order."""
  keep = []
  for c, n in enumerate(counts):
    where = np.flatnonzero(labels == c)
    if len(where) < n:
      raise ValueError(f'label {c} has {len(where)} examples, fewer than {n}')
    keep.append(where[:n])
  keep = np.sort(np.concatenate(keep))
  return images[keep], labels[keep]


def write_task(data_dir, root):
  """The imbalanced task as an IDX folder under root; returns its path."""
  import data_sources  # pylint: disable=g-import-not-at-top
  data = data_sources.load_idx('custom', data_dir)
  train = transfer.select_classes(data.train.images[..., 0],
                                  data.train.labels, CLASSES)
  test = transfer.select_classes(data.test.images[..., 0], data.test.labels,
                                 CLASSES)
  return transfer.write_idx_folder(os.path.join(root, 'task'),
                                   imbalanced_subset(*train, TRAIN_COUNTS),
                                   test)


def train_and_score(workdir, folder, flags):
  """main.py training, then its eval of the last checkpoint, each in a
  fresh process: (eval.json, training process seconds)."""
  import workdir_files  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  common.run_or_exit(common.main_command(
      workdir, 'configs/default.py', folder, *COMMON_FLAGS, *flags))
  seconds = time.perf_counter() - start
  common.run_or_exit([sys.executable, 'main.py', '--mode=eval',
                      f'--workdir={workdir}', '--checkpoint=latest'])
  return workdir_files.read_json(workdir, workdir_files.EVAL,
                                 missing='main.py --mode=eval wrote no '
                                 'eval.json'), seconds


def scores(report) -> dict:
  """Recall of each class, the rare class's precision and the accuracy,
  from eval.json's confusion matrix (rows: true labels)."""
  confusion = np.array(report['confusion_matrix'])
  recall = np.diag(confusion) / confusion.sum(axis=1)
  rare = int(np.argmin(TRAIN_COUNTS))
  return {'recall': recall.tolist(),
          'rare_precision': float(confusion[rare, rare] /
                                  max(1, confusion[:, rare].sum())),
          'accuracy': float(np.trace(confusion) / confusion.sum())}


def run_methods(folder, root):
  """Every method for each seed: {method: [scores of each seed]}."""
  results = {}
  for name, flags in METHODS:
    for seed in SEEDS:
      workdir = os.path.join(root, f'run-{len(results)}-s{seed}')
      report, seconds = train_and_score(workdir, folder,
                                        [*flags, f'--config.seed={seed}'])
      run = {**scores(report), 'seconds': seconds}
      results.setdefault(name, []).append(run)
      print(f'{name} seed {seed}: recall '
            f'{", ".join(f"{r:.3f}" for r in run["recall"])}, accuracy '
            f'{run["accuracy"]:.4f}, {seconds:.1f} s', flush=True)
      shutil.rmtree(workdir, ignore_errors=True)
  return results


def table_lines(results):
  """A row per method: the mean over seeds, each seed in brackets."""
  import data_sources  # pylint: disable=g-import-not-at-top
  names = [data_sources.CLASS_NAMES['fashion_mnist'][c] for c in CLASSES]

  def cell(values, digits=3):
    text = f'{statistics.mean(values):.{digits}f}'
    if len(values) > 1:
      text += ' (' + ', '.join(f'{v:.{digits}f}' for v in values) + ')'
    return text

  rare = names[int(np.argmin(TRAIN_COUNTS))]
  lines = ['| method | ' + ' | '.join(
      f'{n} recall ({c} train)' for n, c in zip(names, TRAIN_COUNTS)) +
           f' | {rare} precision | test accuracy | training process seconds |',
           '| --- |' + ' ---: |' * (len(names) + 3)]
  for name, runs in results.items():
    lines.append(f'| {name} | ' + ' | '.join(
        cell([r['recall'][c] for r in runs]) for c in range(len(names))) +
                 f' | {cell([r["rare_precision"] for r in runs])} | '
                 f'{cell([r["accuracy"] for r in runs], 4)} | '
                 f'{cell([r["seconds"] for r in runs], 1)} |')
  return lines


def report_lines(total, results):
  """The report: the machine, the task in words, the table, the commands."""
  import data_sources  # pylint: disable=g-import-not-at-top
  names = [data_sources.CLASS_NAMES['fashion_mnist'][c] for c in CLASSES]
  return [
      f'machine: {os.cpu_count()} CPU cores, no GPU; the whole mode took '
      f'{total / 60:.1f} min.', '',
      f'Task: Fashion-MNIST classes {", ".join(names)} (labels '
      f'{", ".join(map(str, CLASSES))}, relabelled 0..{len(CLASSES) - 1}); '
      f'training images {", ".join(map(str, TRAIN_COUNTS))} (the first of '
      f'each in file order); test: all 1,000 test images of each. The '
      f'quick-start CNN, configs/default.py (SGD momentum 0.9, learning '
      f'rate 0.01, batch 32), {EPOCHS} epochs, seeds '
      f'{", ".join(map(str, SEEDS))} (mean, then each seed); the last '
      f'checkpoint scored by `main.py --mode=eval --checkpoint=latest`. The '
      f'test set is balanced, so its accuracy is also the mean recall.', '',
      *table_lines(results), '',
      f'Command: `{shlex.join(["python", *sys.argv])}`. Each run is main.py, '
      f'e.g. with balanced sampling:', '', '```sh',
      shlex.join(['python'] + common.main_command(
          'W', 'configs/default.py', 'TASK_IDX', *COMMON_FLAGS,
          '--config.sampling=balanced', '--config.seed=0')[1:]),
      'python main.py --mode=eval --workdir=W --checkpoint=latest', '```']


def measure_imbalance(args):
  """Writes the task, runs every method for each seed; the table (with
  --out, also OUT.md; with --json, the runs)."""
  started = time.perf_counter()
  root = tempfile.mkdtemp(prefix='bench-imbalance-')
  try:
    folder = write_task(args.data_dir, root)
    results = run_methods(folder, root)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  total = time.perf_counter() - started
  common.report(report_lines(total, results), args.out)
  common.write_json(args.json, {'runs': results, 'total_seconds': total})
