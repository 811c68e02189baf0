"""Models of the user's own code, named by import path in `config.model`.

`package.module:ClassName` (importable from the Python path or the folder
the trainer runs in) or `path/to/file.py:ClassName`. The class is a Flax
Linen module, called as `model(images, train=...)` like the table models,
or a Flax NNX module, built as `ClassName(num_classes=..., **model_kwargs,
rngs=nnx.Rngs(...))` and run through `flax.nnx.bridge.ToLinen` (NNXModel),
so that both keep the same TrainState, checkpoints and bitwise resume.
"""

import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from typing import Any

from flax import linen as nn
from flax import nnx
from flax.core import FrozenDict
import jax
import jax.numpy as jnp

FORMS = 'package.module:ClassName or path/to/file.py:ClassName'


class ModelError(ValueError):
  """An import-path model that cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class Imported:
  """A resolved import path."""
  spec: str  # As the config gives it, a file's path made absolute.
  cls: type
  kind: str  # 'linen' or 'nnx'.
  file: str  # The file that defines the class.


def is_import_path(name: str) -> bool:
  return ':' in name


def canonical(name: str) -> str:
  """`name` with a file's path made absolute (what config.json and the
  checkpoint record); table names and module paths unchanged."""
  if not is_import_path(name):
    return name
  target, _, class_name = name.rpartition(':')
  if _is_file(target):
    return f'{os.path.abspath(target)}:{class_name}'
  return name


def _is_file(target: str) -> bool:
  return target.endswith('.py') or os.sep in target


def _load_file(path: str, spec: str):
  if not os.path.isfile(path):
    raise ModelError(f'model {spec!r}: no file {path}; accepted: {FORMS}')
  # One module per file, named after its path, so that two files with the
  # same name do not replace each other in sys.modules.
  digest = hashlib.sha1(path.encode()).hexdigest()[:8]
  stem = re.sub(r'\W', '_', os.path.basename(path)[:-3])
  name = f'_model_{stem}_{digest}'
  loader_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(loader_spec)
  sys.modules[name] = module  # Dataclasses look their module up here.
  try:
    loader_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    del sys.modules[name]
    raise ModelError(f'model {spec!r}: importing {path} failed: '
                     f'{type(e).__name__}: {_first_line(e)}') from e
  return module


def _import_module(target: str, spec: str):
  if os.getcwd() not in sys.path and '' not in sys.path:
    sys.path.append(os.getcwd())  # The folder the trainer runs in.
  try:
    return importlib.import_module(target)
  except ModuleNotFoundError as e:
    if e.name and (target == e.name or target.startswith(e.name + '.')):
      raise ModelError(f'model {spec!r}: no module named {e.name!r} on the '
                       f'Python path or in {os.getcwd()}; accepted: '
                       f'{FORMS}') from e
    raise ModelError(f'model {spec!r}: importing {target} failed: '
                     f'{_first_line(e)}') from e
  except Exception as e:  # pylint: disable=broad-except
    raise ModelError(f'model {spec!r}: importing {target} failed: '
                     f'{type(e).__name__}: {_first_line(e)}') from e


def _first_line(error) -> str:
  return (str(error).strip().splitlines() or [''])[0][:200]


def resolve(name: str) -> Imported:
  """The class `name` (an import path) names; a file is imported again
  when it has changed.

  Raises:
    ModelError: no such module or file, no such name in it, or not a Flax
      Linen or NNX Module class.
  """
  target = canonical(name).rpartition(':')[0]
  version = None
  if _is_file(target) and os.path.isfile(target):
    stat = os.stat(target)
    version = (stat.st_mtime_ns, stat.st_size)
  return _resolve(name, version)


@functools.lru_cache(maxsize=None)
def _resolve(name: str, version) -> Imported:
  del version  # Only part of the cache's key.
  spec = canonical(name)
  target, _, class_name = spec.rpartition(':')
  if not target or not class_name:
    raise ModelError(f'model {name!r} is not an import path; accepted: '
                     f'{FORMS}')
  module = (_load_file(target, name) if _is_file(target)
            else _import_module(target, name))
  cls = getattr(module, class_name, None)
  if cls is None:
    found = sorted(k for k, v in vars(module).items() if isinstance(v, type)
                   and issubclass(v, (nn.Module, nnx.Module))
                   and v.__module__ == module.__name__)
    raise ModelError(f'model {name!r}: {target} has no {class_name!r}; '
                     f'Flax modules it defines: {", ".join(found) or "none"}')
  if isinstance(cls, type) and issubclass(cls, nn.Module):
    kind = 'linen'
  elif isinstance(cls, type) and issubclass(cls, nnx.Module):
    kind = 'nnx'
  else:
    raise ModelError(f'model {name!r} is not a Flax Linen or NNX Module '
                     f'class (it is {type(cls).__name__} {cls!r:.80}); '
                     f'accepted: a subclass of flax.linen.Module or '
                     f'flax.nnx.Module')
  file = inspect.getsourcefile(cls) or (target if _is_file(target) else '')
  imported = Imported(spec=spec, cls=cls, kind=kind,
                      file=os.path.abspath(file) if file else '')
  _check_constructor(imported, name)
  return imported


class _AnyName(frozenset):
  """The options of a constructor that takes **kwargs: any name."""

  def __contains__(self, key):
    return True


def _parameters(imported: Imported) -> dict:
  if imported.kind == 'linen':
    return {f.name: f for f in dataclasses.fields(imported.cls)
            if f.init and f.name not in ('parent', 'name')}
  return dict(inspect.signature(imported.cls.__init__).parameters)


def _check_constructor(imported: Imported, name: str):
  parameters = _parameters(imported)
  takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD
                  for p in parameters.values()
                  if isinstance(p, inspect.Parameter))
  if 'num_classes' not in parameters and not takes_any:
    raise ModelError(f'model {name!r} takes no num_classes; accepted: a '
                     f'module whose constructor takes num_classes (the '
                     f'trainer sets it from the data)')
  if imported.kind == 'nnx' and 'rngs' not in parameters and not takes_any:
    raise ModelError(f'model {name!r} (NNX) takes no rngs; accepted: an '
                     f'NNX module built as ClassName(num_classes=..., '
                     f'rngs=nnx.Rngs(...))')


def options(name: str):
  """The config.model_kwargs keys the class at `name` takes: its
  constructor's arguments but num_classes (and rngs), any name where it
  takes **kwargs."""
  imported = resolve(name)
  parameters = _parameters(imported)
  if any(isinstance(p, inspect.Parameter) and
         p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    return _AnyName()
  return {k for k, p in parameters.items()
          if k not in ('self', 'num_classes', 'rngs') and not (
              isinstance(p, inspect.Parameter) and p.kind in (
                  inspect.Parameter.VAR_POSITIONAL,
                  inspect.Parameter.POSITIONAL_ONLY))}


def create(name: str, num_classes: int, **kwargs) -> nn.Module:
  """The Linen module for `name`: the class itself, or NNXModel around an
  NNX class; only the model_kwargs the user set are passed."""
  imported = resolve(name)
  accepted = options(name)
  for key in kwargs:
    if key not in accepted:
      raise ModelError(f'model {name} takes no option {key!r}; accepted: '
                       f'{", ".join(sorted(accepted)) or "none"}')
  if imported.kind == 'linen':
    try:
      return imported.cls(num_classes=num_classes, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      raise ModelError(f'model {name!r} refused its options {kwargs}: '
                       f'{type(e).__name__}: {_first_line(e)}') from e
  return NNXModel(nnx_class=imported.cls, num_classes=num_classes,
                  kwargs=FrozenDict(num_classes=num_classes, **kwargs))


def _nnx_forward(train: bool, freeze: str):
  """Runs an NNX module the NNX way: Module.train() or Module.eval(), then
  module(images); in training, the BatchNorm layers whose parameters
  `freeze` matches keep to their running statistics."""

  def forward(module, images):
    if train:
      module.train()
      if freeze:
        for path, sub in nnx.iter_modules(module):
          prefix = '/'.join(map(str, path))
          if isinstance(sub, nnx.BatchNorm) and any(
              re.search(freeze, f'{prefix}/{leaf}'.lstrip('/'))
              for leaf in ('scale', 'bias')):
            sub.use_running_average = True
    else:
      module.eval()
    return module(images)

  return forward


class NNXModel(nnx.bridge.ToLinen):
  """An NNX classifier as a Linen module called as model(images, train=...).

  Its parameters and nnx.BatchStat variables become the Linen `params` and
  `batch_stats` collections, named by their attribute paths ('conv/kernel');
  dropout keys come from the Linen `dropout` RNG stream.
  """
  num_classes: int = 0

  def __call__(self, images, train: bool = False, freeze: str = ''):
    # pylint: disable=useless-parent-delegation
    return nnx.bridge.ToLinen.__call__(
        self, images, nnx_method=_nnx_forward(train, freeze))


def check_output(model: nn.Module, name: str, image_shape,
                 num_classes: int):
  """Raises ModelError unless `model` maps (2, *image_shape) images to (2,
  num_classes) logits, traced abstractly (jax.eval_shape, no compile)."""
  images = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
  keys = {'params': jax.random.PRNGKey(0),
          'dropout': jax.random.PRNGKey(1)}  # As models.init_keys.
  try:
    out = jax.eval_shape(
        lambda x: model.init_with_output(keys, x, train=False)[0], images)
  except Exception as e:  # pylint: disable=broad-except
    raise ModelError(f'model {name!r} fails on a batch of images of shape '
                     f'{tuple(image_shape)}: {type(e).__name__}: '
                     f'{_first_line(e)}') from e
  shape = getattr(out, 'shape', None)
  if shape != (2, num_classes):
    raise ModelError(f'model {name!r} returns {_describe(out)} for 2 images '
                     f'of shape {tuple(image_shape)}; expected logits of '
                     f'shape (2, {num_classes}) (batch, num_classes)')


def _describe(out: Any) -> str:
  shape = getattr(out, 'shape', None)
  return f'shape {shape}' if shape is not None else type(out).__name__


def file_sha256(name: str) -> str:
  """SHA-256 of the file defining the import-path model `name`; '' for a
  table model."""
  if not is_import_path(name):
    return ''
  with open(resolve(name).file, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()
