"""Does fine-tuning help? Fashion-MNIST split into a source and a target task.

The source task is classes 0-4 (T-shirt/top, Trouser, Pullover, Dress,
Coat), all their training images; a ResNet-20 is pretrained on it. The
target task is classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot),
relabelled 0..4, with only the first N training images of each class (in
file order, so the 10 are among the 50), tested on all 5,000 test images of
those classes. Each method trains the same steps at the same batch with the
same optimizer and schedule: from scratch, and from the source run's best
checkpoint (init_from; its head is left new) with all layers trained, with
the backbone frozen (only the head trains), and with the backbone at a
tenth of the learning rate. Every run is main.py in a fresh process, as a
user runs it; each split is an IDX folder written to a scratch directory.
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

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
# Training images per target class.
SHOTS = (10, 50)
SEEDS = (0, 1)
MODEL = 'resnet20'
# Flags of every run (configs/default.py underneath). dataset=custom: the
# classes are named 0..4, not after Fashion-MNIST's first five.
COMMON_FLAGS = ('--config.dataset=custom', f'--config.model={MODEL}',
                '--config.optimizer=momentum', '--config.momentum=0.9',
                '--config.lr_schedule=cosine', '--config.eval_batch_size=1000',
                '--config.checkpoint_every_steps=100000',
                '--config.validation_fraction=0')
SOURCE_FLAGS = ('--config.learning_rate=0.1', '--config.batch_size=128',
                '--config.num_epochs=1', '--config.log_every_steps=50')
TARGET_STEPS = 200
TARGET_BATCH = 32
TARGET_LR = 0.05
TARGET_FLAGS = (f'--config.learning_rate={TARGET_LR}',
                f'--config.batch_size={TARGET_BATCH}',
                f'--config.num_train_steps={TARGET_STEPS}',
                '--config.log_every_steps=100')
# The target training file holds each chosen image in whole copies up to
# about this many images, so that an epoch, and with it an evaluation on the
# 5,000 test images, comes every ~100 steps instead of every 2
# (N = 10): the steps draw from the same images, the evaluations are fewer.
EPOCH_IMAGES = 3200
# The backbone of a ResNet is everything but its classifier, Dense_0.
BACKBONE = '^(?!Dense_0)'
# (name, extra flags); None where the method starts from random weights.
METHODS = (
    ('from scratch', None),
    ('fine-tune all layers', ()),
    ('backbone frozen, head trained', (f'--config.freeze={BACKBONE}',)),
    ('backbone lr x0.1', (f'--config.lr_multipliers={BACKBONE}=0.1',)),
)
IDX_NAMES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
             't10k': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}


def select_classes(images, labels, classes, per_class=None):
  """The examples of `classes`, relabelled 0..len(classes)-1 in that order;
  with per_class, only the first that many of each (in file order)."""
  keep = []
  for c in classes:
    where = np.flatnonzero(labels == c)
    if per_class is not None:
      if len(where) < per_class:
        raise ValueError(f'class {c} has {len(where)} examples, fewer than '
                         f'{per_class}')
      where = where[:per_class]
    keep.append(where)
  keep = np.sort(np.concatenate(keep))
  relabel = np.zeros(int(labels.max()) + 1, np.uint8)
  relabel[list(classes)] = np.arange(len(classes))
  return images[keep], relabel[labels[keep]]


def repeats(num_images, epoch_images=EPOCH_IMAGES):
  """How many whole copies of `num_images` make about epoch_images."""
  return max(1, -(-epoch_images // num_images))


def write_idx(path, array):
  """`array` (uint8) as an uncompressed IDX file."""
  array = np.ascontiguousarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
      int(n).to_bytes(4, 'big') for n in array.shape)
  with open(path, 'wb') as f:
    f.write(header + array.tobytes())


def write_idx_folder(path, train, test):
  """Writes the four MNIST IDX files of `train` and `test` ((images,
  labels) each) into path; returns path."""
  os.makedirs(path, exist_ok=True)
  for split, (images, labels) in (('train', train), ('t10k', test)):
    images_name, labels_name = IDX_NAMES[split]
    write_idx(os.path.join(path, images_name), images)
    write_idx(os.path.join(path, labels_name), labels)
  return path


def write_tasks(data_dir, root, shots=SHOTS):
  """The source and target IDX folders under root: {'source': path,
  N: path for each of shots}."""
  import data_sources  # pylint: disable=g-import-not-at-top
  data = data_sources.load_idx('custom', data_dir)
  train = (data.train.images[..., 0], data.train.labels)
  test = (data.test.images[..., 0], data.test.labels)
  folders = {'source': write_idx_folder(
      os.path.join(root, 'source'), select_classes(*train, SOURCE_CLASSES),
      select_classes(*test, SOURCE_CLASSES))}
  target_test = select_classes(*test, TARGET_CLASSES)
  for n in shots:
    images, labels = select_classes(*train, TARGET_CLASSES, per_class=n)
    copies = repeats(len(labels))
    folders[n] = write_idx_folder(
        os.path.join(root, f'target{n}'),
        (np.tile(images, (copies, 1, 1)), np.tile(labels, copies)),
        target_test)
  return folders


def train_run(workdir, data_dir, flags):
  """main.py on data_dir with `flags` in a fresh process: (summary.json,
  whole process seconds)."""
  import workdir_files  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  common.run_or_exit(common.main_command(
      workdir, 'configs/default.py', data_dir, *COMMON_FLAGS, *flags))
  seconds = time.perf_counter() - start
  return workdir_files.read_json(workdir, workdir_files.SUMMARY,
                                 missing='main.py wrote no summary'), seconds


def command_line(workdir, data_dir, flags):
  """The main.py command of a run, as a user would type it."""
  return shlex.join(['python'] + common.main_command(
      workdir, 'configs/default.py', data_dir, *COMMON_FLAGS, *flags)[1:])


def table_lines(results):
  """The markdown table of results ({(N, method): [run, ...]}): a row per
  N and method, the mean over seeds with each seed's value in brackets
  where there are several."""

  def cell(values, digits):
    text = f'{statistics.mean(values):.{digits}f}'
    if len(values) > 1:
      text += ' (' + ', '.join(f'{v:.{digits}f}' for v in values) + ')'
    return text

  lines = ['| images per class | method | final test accuracy | best test '
           'accuracy (chosen on test) | train accuracy, last epoch | train '
           'seconds | whole process seconds |',
           '| ---: | --- | ---: | ---: | ---: | ---: | ---: |']
  for (n, name), runs in results.items():
    lines.append(
        f'| {n} | {name} | {cell([r["final"] for r in runs], 4)} | '
        f'{cell([r["best"] for r in runs], 4)} | '
        f'{cell([r["train_accuracy"] for r in runs], 3)} | '
        f'{cell([r["train_seconds"] for r in runs], 1)} | '
        f'{cell([r["seconds"] for r in runs], 1)} |')
  return lines


def run_methods(folders, source_dir):
  """Every method on each target folder, for each seed: {(N, method):
  [run, ...]}, each run a dict of its accuracies and seconds."""
  results = {}
  for n in SHOTS:
    for name, extra in METHODS:
      for seed in SEEDS:
        flags = [*TARGET_FLAGS, f'--config.seed={seed}']
        if extra is not None:
          flags += [f'--config.init_from={source_dir}', *extra]
        workdir = os.path.join(os.path.dirname(source_dir),
                               f'n{n}-{len(results)}-s{seed}')
        summary, seconds = train_run(workdir, folders[n], flags)
        run = {'final': summary['test_accuracy'],
               'train_accuracy': summary['history'][-1]['train_accuracy'],
               'best': summary['best_test_accuracy'],
               'best_step': summary['best_step'],
               'train_seconds': summary['train_seconds'],
               'seconds': seconds,
               'initialized_from': summary.get('initialized_from')}
        results.setdefault((n, name), []).append(run)
        print(f'N={n} {name} seed {seed}: final {run["final"]:.4f}, best '
              f'{run["best"]:.4f} at step {run["best_step"]}, '
              f'{seconds:.1f} s', flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
  return results


def report_lines(facts, total, source, source_seconds, results):
  """The report: the machine, both tasks in words, the table, the
  commands."""
  return [
      f'machine: {common.describe(facts)}; the whole mode took '
      f'{total / 60:.1f} min.', '',
      f'Source: {MODEL} on classes 0-4 ({len(SOURCE_CLASSES)} x 6,000 '
      f'training images), 1 epoch: test accuracy '
      f'{source["test_accuracy"]:.4f} on their 5,000 test images, '
      f'{source_seconds:.1f} s.', '',
      f'Target: classes 5-9 relabelled 0..4, N training images per class, '
      f'all 5,000 of their test images. Every method: {TARGET_STEPS} steps '
      f'at batch {TARGET_BATCH}, SGD momentum 0.9, learning rate '
      f'{TARGET_LR} with cosine decay, no weight decay or augmentation, '
      f'seeds {", ".join(map(str, SEEDS))} (mean, then each seed). No '
      f'validation split: "best" is the highest of the evaluations on the '
      f'test set (about every {EPOCH_IMAGES // TARGET_BATCH} steps and the '
      f'last), so it is optimistic; "final" is the last step.', '',
      *table_lines(results), '',
      f'Command: `{shlex.join(["python", *sys.argv])}`. Each run is main.py, '
      f'e.g. with the backbone frozen:', '', '```sh',
      command_line('W', 'TARGET_IDX', [
          *TARGET_FLAGS, '--config.seed=0', '--config.init_from=SOURCE_W',
          f'--config.freeze={BACKBONE}']), '```']


def measure_transfer(args):
  """Pretrains on the source task, runs every method on each target task;
  the table (with --out, also OUT.md; with --json, the runs)."""
  started = time.perf_counter()
  facts = common.child('machine_facts', args.data_dir)
  root = tempfile.mkdtemp(prefix='bench-transfer-')
  try:
    folders = write_tasks(args.data_dir, root)
    source_dir = os.path.join(root, 'source-run')
    source, source_seconds = train_run(source_dir, folders['source'],
                                       SOURCE_FLAGS)
    print(f'source: {MODEL}, 1 epoch of {source["history"][-1]["step"]} '
          f'steps, test accuracy {source["test_accuracy"]:.4f}, '
          f'{source_seconds:.1f} s', flush=True)
    results = run_methods(folders, source_dir)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  total = time.perf_counter() - started
  common.report(report_lines(facts, total, source, source_seconds, results),
                args.out)
  common.write_json(args.json, {
      'source': {'test_accuracy': source['test_accuracy'],
                 'seconds': source_seconds},
      'runs': {f'{n} {name}': runs for (n, name), runs in results.items()},
      'total_seconds': total})
