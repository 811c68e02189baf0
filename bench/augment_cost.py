"""What on-device augmentation costs the ResNet-20 train step.

For each image shape of SHAPES, ResNet-20's donated jitted train step
(`steps.jit_steps(mesh, augment=..., num_classes=...)`, SGD with momentum,
batch BATCH) on one fixed synthetic batch of uint8 images, with each
augmentation of AUGMENTS: none, crop_flip, and the full recipe. Beside
them, each augmentation alone (`augmentation.augment` jitted as the step
calls it, on the same batch and keys). Everything runs in this process
after main.py's set-up, timed windows alternating between all of them
(windows.alternate_windows); the table gives the median window, the step's
time against no augmentation, and the augmentation's share of the step:
(step time - step time without it) / step time.
"""

import shlex
import statistics
import sys

import numpy as np

import common
import contenders
import windows

MODEL = 'resnet20'
NUM_CLASSES = 10
BATCH = 128
# Fashion-MNIST's shape, and CIFAR's.
SHAPES = ((28, 28, 1), (32, 32, 3))
# name -> config.augment.
AUGMENTS = {
    'none': 'none',
    'crop_flip': 'crop_flip',
    'full recipe': 'crop_flip,randaugment,mixup,cutmix,random_erasing',
}
ALONE = ' alone'


def synthetic_batch(image_shape, seed=0):
  """A fixed batch of random uint8 images and labels of NUM_CLASSES."""
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (BATCH, *image_shape), dtype=np.uint8),
          rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32))


class Step:
  """ResNet-20's train step with `augment`, on a fixed batch."""

  def __init__(self, image_shape, augment, seed=0):
    import jax  # pylint: disable=g-import-not-at-top
    import distributed  # pylint: disable=g-import-not-at-top
    import models  # pylint: disable=g-import-not-at-top
    import optimizers  # pylint: disable=g-import-not-at-top
    import steps  # pylint: disable=g-import-not-at-top

    self._jax = jax
    mesh = distributed.Mesh()
    tx = optimizers.create_optimizer('sgd', contenders.LEARNING_RATE,
                                     contenders.MOMENTUM)
    self.state = mesh.put_replicated(steps.create_train_state(
        models.create_model(MODEL, NUM_CLASSES), tx, image_shape, seed))
    self.batch = mesh.put_batch(*synthetic_batch(image_shape, seed))
    self._step, _ = steps.jit_steps(mesh, augment=augment,
                                    num_classes=NUM_CLASSES)

  def run(self, num_steps):
    for _ in range(num_steps):
      self.state = self._step(self.state, *self.batch)
    self._jax.block_until_ready(self.state)


class Alone:
  """`augment` alone, as the train step applies it, on a fixed batch; a
  new key each step (fold_in, as the step draws it)."""

  def __init__(self, image_shape, augment, seed=0):
    import jax  # pylint: disable=g-import-not-at-top
    import augmentation  # pylint: disable=g-import-not-at-top
    import distributed  # pylint: disable=g-import-not-at-top

    self._jax = jax
    self.batch = distributed.Mesh().put_batch(*synthetic_batch(image_shape,
                                                               seed))
    key = jax.random.PRNGKey(seed)

    def apply(images, labels, step):
      images = augmentation.to_float(images)
      step_key = jax.random.fold_in(key, step)
      if augmentation.mixes(augment):
        return augmentation.augment(
            images, step_key, augment,
            targets=jax.nn.one_hot(labels, NUM_CLASSES))
      return augmentation.augment(images, step_key, augment)

    self._apply = jax.jit(apply)
    self._next_step = 0

  def run(self, num_steps):
    out = None
    for i in range(num_steps):
      out = self._apply(*self.batch, self._next_step + i)
    self._next_step += num_steps
    self._jax.block_until_ready(out)


def lineup():
  """{name: (runner, BATCH)}: every shape with every augmentation, in the
  step and alone."""
  runners = {}
  for shape in SHAPES:
    for name, augment in AUGMENTS.items():
      runners[label(shape, name)] = (Step(shape, augment), BATCH)
      if augment != 'none':
        runners[label(shape, name) + ALONE] = (Alone(shape, augment), BATCH)
  return runners


def label(shape, name) -> str:
  return f'{"x".join(map(str, shape))} {name}'


def measure_augment_cost(args):
  """Times every shape and augmentation, alternating; the table (with
  --out, also OUT.md; with --json, every window)."""
  import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup(log=False)  # Before JAX's backends start, as main.py.
  import jax  # pylint: disable=g-import-not-at-top
  rates = windows.alternate_windows(lineup(), args)
  facts = {'backend': jax.default_backend(),
           'device': jax.devices()[0].device_kind,
           'device_count': jax.device_count()}
  common.report(report_lines(facts, rates, args), args.out)
  common.write_json(args.json, rates)


def report_lines(facts, rates, args):
  """The machine and settings, the table, the command."""
  ms = {name: 1e3 * BATCH / statistics.median(r) for name, r in rates.items()}
  warmup = max(windows.MIN_WARMUP_STEPS, args.warmup_images // BATCH)
  lines = [
      f'machine: {common.describe(facts)}, no GPU. {MODEL}, batch {BATCH}, '
      f'SGD momentum {contenders.MOMENTUM}, float32, a fixed synthetic '
      f'batch; median of {args.windows} windows of '
      f'{windows.window_steps(BATCH, args.window_images)} steps each, all '
      f'rows alternating, after {warmup} warm-up steps. Share of the step: '
      f'(step - step without augmentation) / step.', '',
      '| images | augment | train images/s | ms per step | vs none | share '
      'of the step | augmentation alone, ms per batch |',
      '| --- | --- | ---: | ---: | ---: | ---: | ---: |']
  for shape in SHAPES:
    base = ms[label(shape, 'none')]
    for name, augment in AUGMENTS.items():
      step = ms[label(shape, name)]
      alone = ms.get(label(shape, name) + ALONE)
      lines.append(
          f'| {"x".join(map(str, shape))} | `{augment}` | '
          f'{BATCH * 1e3 / step:.0f} | {step:.1f} | {base / step:.2f}x | '
          f'{"-" if name == "none" else f"{100 * (step - base) / step:.0f}%"}'
          f' | {"-" if alone is None else f"{alone:.1f}"} |')
  lines += ['', 'Each window, images/s:', '']
  for name, values in rates.items():
    lines.append(f'* {name}: {", ".join(f"{v:.0f}" for v in values)}')
  lines += ['', f'Command: `{shlex.join(["python", *sys.argv])}`.']
  return lines
