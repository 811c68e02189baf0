"""The training loops the benchmark compares, each behind one interface.

A contender is built with `make(name, data, batch_size)` and offers
`run(num_steps)`, which trains that many steps and returns only when they
are finished (so wall time around it is honest), and `evaluate()`.

* `reference`: the Flax quick-start loop, written here from its published
  description: tf.data over the in-memory arrays with shuffle(1024) and
  batch 32, a jitted `train_step`, then a separate jitted metrics pass over
  the same batch, metrics accumulated in the state.
* `trainer`: this project's own pieces as the training loop (train.py)
  uses them: `input_pipeline.device_train_batches` (host batches sent
  ahead, or gathered on the device) and the donated jitted
  `steps.train_step` with fused loss/accuracy; `trainer_on_device` the same
  with `data_on_device` (the training set copied to the device once,
  batches gathered there); `trainer_resnet20` the same with ResNet-20.
* `torch`: the same CNN and optimiser in PyTorch, on the GPU when PyTorch
  sees one (the training set copied there once, batches indexed there, as a
  hand-written loop at its best does), else on the CPU.
"""

import functools
import importlib.util
import itertools
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The quick start's batch size, and its optimiser, which every CNN
# contender trains with.
QUICK_START_BATCH_SIZE = 32
LEARNING_RATE = 0.01
MOMENTUM = 0.9
# The quick start's tf.data shuffle buffer.
SHUFFLE_BUFFER = 1024
# Test examples per evaluation batch.
EVAL_BATCH_SIZE = 1000
# ResNet-50 as on ImageNet: its classes and SGD's learning rate.
RESNET50_CLASSES = 1000
RESNET50_LEARNING_RATE = 0.1


class Reference:
  """Flax quick start: tf.data input, train_step then compute_metrics."""

  def __init__(self, data, batch_size, learning_rate=LEARNING_RATE,
               momentum=MOMENTUM, seed=0):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    from clu import metrics  # pylint: disable=g-import-not-at-top
    import flax  # pylint: disable=g-import-not-at-top
    from flax.training import train_state  # pylint: disable=g-import-not-at-top
    import models  # pylint: disable=g-import-not-at-top

    self.data = data
    self.batch_size = batch_size
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError:  # The GPU machines lend no TensorFlow (it is large).
      self.iterator = shuffle_buffer_batches(
          _float(data.train.images), data.train.labels, batch_size, seed)
    else:
      tf.random.set_seed(seed)
      ds = tf.data.Dataset.from_tensor_slices(
          {'image': _float(data.train.images), 'label': data.train.labels})
      ds = ds.repeat().shuffle(SHUFFLE_BUFFER, seed=seed).batch(
          batch_size, drop_remainder=True)
      self.iterator = ds.prefetch(1).as_numpy_iterator()

    @flax.struct.dataclass
    class Metrics(metrics.Collection):
      accuracy: metrics.Accuracy
      loss: metrics.Average.from_output('loss')

    class State(train_state.TrainState):
      metrics: Metrics

    model = models.CNN(num_classes=10)
    params = model.init(jax.random.PRNGKey(seed), jnp.ones([1, 28, 28, 1]))[
        'params']
    self.state = State.create(apply_fn=model.apply, params=params,
                              tx=optax.sgd(learning_rate, momentum),
                              metrics=Metrics.empty())

    @jax.jit
    def train_step(state, batch):
      def loss_fn(params):
        logits = state.apply_fn({'params': params}, batch['image'])
        return optax.softmax_cross_entropy_with_integer_labels(
            logits=logits, labels=batch['label']).mean()
      grads = jax.grad(loss_fn)(state.params)
      return state.apply_gradients(grads=grads)

    @jax.jit
    def compute_metrics(state, batch):
      logits = state.apply_fn({'params': state.params}, batch['image'])
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits=logits, labels=batch['label']).mean()
      update = state.metrics.single_from_model_output(
          logits=logits, labels=batch['label'], loss=loss)
      return state.replace(metrics=state.metrics.merge(update))

    @jax.jit
    def eval_logits(state, images):
      return state.apply_fn({'params': state.params}, images)

    self._train_step, self._compute_metrics = train_step, compute_metrics
    self._eval_logits = eval_logits
    self._jax = jax

  def run(self, num_steps):
    for batch in itertools.islice(self.iterator, num_steps):
      self.state = self._train_step(self.state, batch)
      self.state = self._compute_metrics(self.state, batch)
    self._jax.block_until_ready(self.state)

  def evaluate(self):
    # The quick start evaluates in batches of its batch size and drops the
    # remainder; here full-size batches, counting every example.
    correct = 0
    test = self.data.test
    for start in range(0, len(test), EVAL_BATCH_SIZE):
      end = start + EVAL_BATCH_SIZE
      logits = self._eval_logits(self.state, _float(test.images[start:end]))
      correct += int((np.asarray(logits).argmax(-1) ==
                      test.labels[start:end]).sum())
    return correct / len(test)


def reference_input() -> str:
  """How the reference loop gets its batches on this machine."""
  if importlib.util.find_spec('tensorflow'):
    return 'tf.data'
  return 'a NumPy shuffle buffer (no TensorFlow here)'


def shuffle_buffer_batches(images, labels, batch_size, seed,
                           buffer_size=SHUFFLE_BUFFER):
  """Batches as tf.data's repeat().shuffle(buffer_size).batch() makes them:
  each example comes from a random slot of a buffer that the stream refills.

  Our own, for machines without TensorFlow; the same sampling scheme, not
  the same random numbers.
  """
  rng = np.random.default_rng(seed)
  n = len(labels)
  stream = itertools.cycle(range(n))
  buffer = [next(stream) for _ in range(min(buffer_size, n))]
  while True:
    picked = np.empty(batch_size, np.int64)
    for i, slot in enumerate(rng.integers(len(buffer), size=batch_size)):
      picked[i] = buffer[slot]
      buffer[slot] = next(stream)
    yield {'image': images[picked], 'label': labels[picked]}


class Trainer:
  """This project's step and input pieces, as the training loop uses them."""

  def __init__(self, data, batch_size, learning_rate=LEARNING_RATE,
               momentum=MOMENTUM, seed=0, model='cnn', model_kwargs=None,
               prefetch_batches=2, data_on_device=False):
    import jax  # pylint: disable=g-import-not-at-top
    import distributed  # pylint: disable=g-import-not-at-top
    import input_pipeline  # pylint: disable=g-import-not-at-top
    import models  # pylint: disable=g-import-not-at-top
    import optimizers  # pylint: disable=g-import-not-at-top
    import steps  # pylint: disable=g-import-not-at-top

    self.data, self.batch_size, self.seed = data, batch_size, seed
    self.prefetch_batches, self.data_on_device = (prefetch_batches,
                                                  data_on_device)
    self.mesh = distributed.Mesh()
    tx = optimizers.create_optimizer('sgd', learning_rate, momentum)
    self.state = self.mesh.put_replicated(steps.create_train_state(
        models.create_model(model, len(data.class_names),
                            **(model_kwargs or {})), tx,
        tuple(data.train.image_shape), seed))
    self._step, self._eval = steps.jit_steps(self.mesh)
    self._next_step = 0
    self._jax, self._input_pipeline, self._steps = jax, input_pipeline, steps
    self._distributed = distributed

  def run(self, num_steps):
    batches = self._input_pipeline.device_train_batches(
        self.data.train, self.batch_size, self.seed, self._next_step,
        num_steps, self.mesh, prefetch_batches=self.prefetch_batches,
        on_device=self.data_on_device)
    wait = self._distributed.one_step_in_flight()
    for batch in batches:
      self.state = self._step(self.state, *batch)
      if wait:
        self._jax.block_until_ready(self.state)
    self._next_step += num_steps
    self._jax.block_until_ready(self.state)

  def evaluate(self):
    return self._steps.evaluate(self._eval, self.state, self.data.test,
                                EVAL_BATCH_SIZE, self.mesh)['accuracy']


class Torch:
  """The quick-start CNN and SGD with momentum in PyTorch (CUDA if seen)."""

  def __init__(self, data, batch_size, learning_rate=LEARNING_RATE,
               momentum=MOMENTUM, seed=0):
    import torch  # pylint: disable=g-import-not-at-top
    from torch import nn  # pylint: disable=g-import-not-at-top

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count())
    self.torch, self.data, self.batch_size = torch, data, batch_size
    self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    # NCHW copies once (to the GPU, if any), so the loop only indexes.
    self.images = torch.from_numpy(np.ascontiguousarray(
        _float(data.train.images).transpose(0, 3, 1, 2))).to(self.device)
    self.labels = torch.from_numpy(data.train.labels.astype(np.int64)).to(
        self.device)
    self.model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(),
        nn.Linear(256, 10)).to(self.device)
    self.optimizer = torch.optim.SGD(self.model.parameters(),
                                     lr=learning_rate, momentum=momentum)
    self.loss_fn = nn.CrossEntropyLoss()
    self.generator = torch.Generator().manual_seed(seed)
    self.perm, self.position = None, 0

  def _indices(self):
    n = len(self.labels)
    if self.perm is None or self.position + self.batch_size > n:
      self.perm = self.torch.randperm(n, generator=self.generator)
      self.position = 0
    idx = self.perm[self.position:self.position + self.batch_size]
    self.position += self.batch_size
    return idx.to(self.device, non_blocking=True)

  def run(self, num_steps):
    self.model.train()
    for _ in range(num_steps):
      idx = self._indices()
      logits = self.model(self.images[idx])
      loss = self.loss_fn(logits, self.labels[idx])
      # Accuracy from the same logits, as the trainer does.
      (logits.detach().argmax(1) == self.labels[idx]).float().mean()
      self.optimizer.zero_grad(set_to_none=True)
      loss.backward()
      self.optimizer.step()
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()

  def evaluate(self):
    self.model.eval()
    test = self.data.test
    images = self.torch.from_numpy(np.ascontiguousarray(
        _float(test.images).transpose(0, 3, 1, 2))).to(self.device)
    with self.torch.no_grad():
      predictions = self.model(images).argmax(1).cpu().numpy()
    return float((predictions == test.labels).mean())


class TrainerResNet50:
  """This project's ResNet-50 (bfloat16 compute) on a fixed synthetic
  batch of uint8 images, through the same donated jitted train step."""

  def __init__(self, batch_size, image_size=224, seed=0):
    import jax  # pylint: disable=g-import-not-at-top
    import distributed  # pylint: disable=g-import-not-at-top
    import models  # pylint: disable=g-import-not-at-top
    import optimizers  # pylint: disable=g-import-not-at-top
    import steps  # pylint: disable=g-import-not-at-top

    self.mesh = distributed.Mesh()
    self.state = self.mesh.put_replicated(steps.create_train_state(
        models.create_model('resnet50', RESNET50_CLASSES, dtype='bfloat16'),
        optimizers.create_optimizer('sgd', RESNET50_LEARNING_RATE, MOMENTUM),
        (image_size, image_size, 3), seed))
    images, labels = synthetic_batch(batch_size, image_size, seed)
    self.batch = self.mesh.put_batch(images, labels)
    self._step, _ = steps.jit_steps(self.mesh)
    self._jax = jax

  def flops_per_image(self):
    """Training FLOPs per image of one step (XLA's cost analysis)."""
    cost = self._step.lower(self.state, *self.batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost['flops'] / len(self.batch[1])

  def run(self, num_steps):
    for _ in range(num_steps):
      self.state = self._step(self.state, *self.batch)
    self._jax.block_until_ready(self.state)


class TorchResNet50:
  """torchvision's ResNet-50 under bfloat16 autocast, channels-last, SGD
  with momentum, on the same kind of synthetic batch (CUDA if seen)."""

  def __init__(self, batch_size, image_size=224, seed=0):
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top

    torch.manual_seed(seed)
    self.torch = torch
    self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    self.model = torchvision.models.resnet50(
        num_classes=RESNET50_CLASSES).to(self.device,
                                         memory_format=torch.channels_last)
    self.optimizer = torch.optim.SGD(self.model.parameters(),
                                     lr=RESNET50_LEARNING_RATE,
                                     momentum=MOMENTUM)
    self.loss_fn = torch.nn.CrossEntropyLoss()
    images, labels = synthetic_batch(batch_size, image_size, seed)
    # The same scaling to [0, 1] as the trainer's, inside each step.
    self.images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(
        self.device).contiguous(memory_format=torch.channels_last)
    self.labels = torch.from_numpy(labels.astype(np.int64)).to(self.device)

  def run(self, num_steps):
    self.model.train()
    for _ in range(num_steps):
      with self.torch.autocast(self.device.type, dtype=self.torch.bfloat16):
        logits = self.model(self.images.float() / 255)
        loss = self.loss_fn(logits, self.labels)
      self.optimizer.zero_grad(set_to_none=True)
      loss.backward()
      self.optimizer.step()
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()


def synthetic_batch(batch_size, image_size, seed):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (batch_size, image_size, image_size, 3),
                       dtype=np.uint8),
          rng.integers(0, RESNET50_CLASSES, batch_size).astype(np.int32))


CONTENDERS = {'reference': Reference, 'trainer': Trainer,
              'trainer_on_device': functools.partial(Trainer,
                                                     data_on_device=True),
              'trainer_resnet20': functools.partial(Trainer,
                                                    model='resnet20'),
              'torch': Torch}
RESNET50 = {'trainer': TrainerResNet50, 'torch': TorchResNet50}
# Libraries a contender needs beyond the trainer's requirements.txt
# (bench/requirements.txt installs PyTorch); one not installed is left out.
NEEDS = {'torch': ('torch',)}
RESNET50_NEEDS = {'torch': ('torch', 'torchvision')}


def missing_libraries(kind: str, needs=None) -> list[str]:
  """The libraries of `needs` (default NEEDS) that `kind` lacks here."""
  return [name for name in (needs or NEEDS).get(kind, ())
          if importlib.util.find_spec(name) is None]


def _float(images):
  """uint8 -> float32 in [0, 1], as the quick start and PyTorch loops take
  their data (the trainer takes uint8 and scales on the device)."""
  return images.astype(np.float32) / np.float32(255)


def make(name, data, batch_size, **kwargs):
  """The contender `name` (a key of CONTENDERS) on `data`."""
  return CONTENDERS[name](data, batch_size, **kwargs)


def timed(fn, *args):
  """Wall seconds of fn(*args)."""
  start = time.perf_counter()
  fn(*args)
  return time.perf_counter() - start
