"""Training images/s of ViT-Ti and ConvNeXt-atto at 32x32: ours vs PyTorch.

For each model of ZOO, our train step (`steps.create_train_state` and the
donated `steps.jit_steps` step, AdamW) beside the same architecture in
plain PyTorch on the CPU: tests/torch_reference.py's ViT and ConvNeXt, which
the parity tests hold to timm's layout and forward pass (timm and
torchvision do not import here). Both train on one fixed synthetic batch of
uint8 images, scaled to [0, 1] inside each step, with cross-entropy and
accuracy from the same logits, in train mode. Both run in this process,
which makes main.py's set-up (`runtime.setup()`) before JAX starts: its
malloc setting then holds for PyTorch too. Timed windows alternate between
the two (windows.alternate_windows); the table gives the median window and
the ratio of medians, and apart from it the one-off costs: our state's
initialisation and first (compiling) step, PyTorch's first step.
"""

import importlib.util
import os
import shlex
import statistics
import sys
import time

import numpy as np

import common
import contenders
import windows

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
BATCH = 64
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.05
# name -> (our models.create_model name and options, torch_reference's
# timm name and options, the ConvNeXt stem stride or None, channels-last).
# timm's patch-16 ViT at 32 px would see 4 patches; patch 4 gives 64.
# ConvNeXt's 4x4 stride-4 stem would leave 1x1 by its last stage; stride 2
# leaves 2x2. PyTorch's convolutions run channels-last for ConvNeXt (its
# LayerNorms then permute to a contiguous tensor); the ViT has only the
# patch convolution, so it stays as it comes.
ZOO = {
    'ViT-Ti, patch 4': (('vit_tiny', {'patch_size': 4}),
                        ('vit_tiny_patch16_224',
                         {'patch_size': 4, 'img_size': IMAGE_SHAPE[0]}),
                        None, False),
    'ConvNeXt-atto, stem stride 2': (('convnext_atto', {'stem_stride': 2}),
                                     ('convnext_atto', {}), 2, True),
}
TORCH_REFERENCE = os.path.join(contenders.ROOT, 'tests', 'torch_reference.py')


def synthetic_batch(seed=0):
  """A fixed batch of random uint8 images and labels of NUM_CLASSES."""
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (BATCH, *IMAGE_SHAPE), dtype=np.uint8),
          rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32))


class Ours:
  """Our donated jitted train step with AdamW on a fixed batch."""

  def __init__(self, name, kwargs, seed=0):
    import jax  # pylint: disable=g-import-not-at-top
    import distributed  # pylint: disable=g-import-not-at-top
    import models  # pylint: disable=g-import-not-at-top
    import optimizers  # pylint: disable=g-import-not-at-top
    import steps  # pylint: disable=g-import-not-at-top

    self._jax = jax
    mesh = distributed.Mesh()
    tx = optimizers.create_optimizer('adamw', LEARNING_RATE,
                                     weight_decay=WEIGHT_DECAY)
    model = models.create_model(name, NUM_CLASSES, **kwargs)
    start = time.perf_counter()
    self.state = mesh.put_replicated(steps.create_train_state(
        model, tx, IMAGE_SHAPE, seed))
    jax.block_until_ready(self.state)
    self.init_seconds = time.perf_counter() - start
    self.batch = mesh.put_batch(*synthetic_batch(seed))
    self._step, _ = steps.jit_steps(mesh)
    self.params = sum(x.size for x in jax.tree.leaves(self.state.params))
    self.first_step_seconds = contenders.timed(self.run, 1)

  def run(self, num_steps):
    for _ in range(num_steps):
      self.state = self._step(self.state, *self.batch)
    self._jax.block_until_ready(self.state)


def load_torch_reference():
  """tests/torch_reference.py as a module (tests/ is no package)."""
  spec = importlib.util.spec_from_file_location('torch_reference',
                                                TORCH_REFERENCE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class Torch:
  """The same architecture in plain PyTorch, AdamW, on the CPU."""

  def __init__(self, name, kwargs, stem_stride, channels_last, seed=0):
    import torch  # pylint: disable=g-import-not-at-top

    reference = load_torch_reference()
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count())
    self.torch = torch
    model = reference.create_timm(name, num_classes=NUM_CLASSES, **kwargs)
    if stem_stride is not None:
      # Our stem at this stride: the 4x4 kernel padded by 1 ('SAME'), so
      # the output is the image size / stride.
      old = model.stem[0]
      model.stem[0] = torch.nn.Conv2d(old.in_channels, old.out_channels, 4,
                                      stem_stride, padding=1)
    self.memory_format = (torch.channels_last if channels_last else
                          torch.contiguous_format)
    self.model = model.to(memory_format=self.memory_format).train()
    # Weight decay as ours (optimizers.decay_mask): kernels and embeddings,
    # not biases and norm parameters (timm's param_groups_weight_decay).
    params = list(self.model.parameters())
    self.optimizer = torch.optim.AdamW(
        [{'params': [p for p in params if p.ndim > 1],
          'weight_decay': WEIGHT_DECAY},
         {'params': [p for p in params if p.ndim <= 1], 'weight_decay': 0.0}],
        lr=LEARNING_RATE)
    self.loss_fn = torch.nn.CrossEntropyLoss()
    images, labels = synthetic_batch(seed)
    self.images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy(
    )).contiguous(memory_format=self.memory_format)
    self.labels = torch.from_numpy(labels.astype(np.int64))
    self.params = sum(p.numel() for p in params)
    self.first_step_seconds = contenders.timed(self.run, 1)

  def run(self, num_steps):
    for _ in range(num_steps):
      # The same scaling to [0, 1] as ours, inside each step.
      logits = self.model(self.images.float() / 255)
      loss = self.loss_fn(logits, self.labels)
      # Accuracy from the same logits, as our step does.
      (logits.detach().argmax(1) == self.labels).float().mean()
      self.optimizer.zero_grad(set_to_none=True)
      loss.backward()
      self.optimizer.step()


def measure_zoo(args):
  """Times each model of ZOO, ours and PyTorch alternating; the table
  (with --out, also OUT.md; with --json, every window)."""
  import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup(log=False)  # Before JAX's backends start, as main.py.
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  results = {}
  for name, ((ours_name, ours_kwargs), (torch_name, torch_kwargs), stride,
             channels_last) in ZOO.items():
    ours = Ours(ours_name, ours_kwargs)
    theirs = Torch(torch_name, torch_kwargs, stride, channels_last)
    if ours.params != theirs.params:
      raise AssertionError(f'{name}: {ours.params} parameters in ours, '
                           f'{theirs.params} in PyTorch; not the same model')
    rates = windows.alternate_windows(
        {'ours': (ours, BATCH), 'PyTorch': (theirs, BATCH)}, args)
    results[name] = {'params': ours.params, 'windows': rates,
                     'ours_init_seconds': ours.init_seconds,
                     'ours_first_step_seconds': ours.first_step_seconds,
                     'torch_first_step_seconds': theirs.first_step_seconds}
    print(f'{name}: ours {statistics.median(rates["ours"]):.1f}, PyTorch '
          f'{statistics.median(rates["PyTorch"]):.1f} images/s', flush=True)
    del ours, theirs
  facts = {'backend': jax.default_backend(),
           'device': jax.devices()[0].device_kind,
           'device_count': jax.device_count()}
  common.report(report_lines(facts, results, args, jax.__version__,
                             torch.__version__), args.out)
  common.write_json(args.json, results)


def report_lines(facts, results, args, jax_version, torch_version):
  """The machine and settings, the table, the command."""
  warmup = max(windows.MIN_WARMUP_STEPS, args.warmup_images // BATCH)
  lines = [
      f'machine: {common.describe(facts)}, no GPU; JAX {jax_version}, '
      f'PyTorch {torch_version} ({os.cpu_count()} threads). '
      f'{IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}x{IMAGE_SHAPE[2]} synthetic images, '
      f'{NUM_CLASSES} classes, batch {BATCH}, AdamW (lr {LEARNING_RATE}, '
      f'weight decay {WEIGHT_DECAY} on kernels and embeddings), float32; '
      f'median of {args.windows} windows of '
      f'{windows.window_steps(BATCH, args.window_images)} steps each, '
      f'alternating, after {warmup} warm-up steps.', '',
      '| model | parameters | ours images/s | PyTorch images/s | ours / '
      'PyTorch | ours: state init (s) | ours: first step, compiling (s) | '
      'PyTorch: first step (s) |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
  for name, r in results.items():
    ours = statistics.median(r['windows']['ours'])
    theirs = statistics.median(r['windows']['PyTorch'])
    lines.append(
        f'| {name} | {r["params"]:,} | {ours:.1f} | {theirs:.1f} | '
        f'{ours / theirs:.2f}x | {r["ours_init_seconds"]:.1f} | '
        f'{r["ours_first_step_seconds"]:.1f} | '
        f'{r["torch_first_step_seconds"]:.2f} |')
  lines += ['', 'Each window, images/s:', '']
  for name, r in results.items():
    for side, values in r['windows'].items():
      lines.append(f'* {name}, {side}: '
                   f'{", ".join(f"{v:.1f}" for v in values)}')
  lines += ['', f'Command: `{shlex.join(["python", *sys.argv])}`.']
  return lines
