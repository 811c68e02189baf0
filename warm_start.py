"""Where a run's first weights come from (`config.init_from`), and how they
are put onto its fresh state.

A source is an earlier run of ours (a workdir: its best checkpoint, or
`W:latest`, `W:STEP`; or one checkpoint folder `W/checkpoints/STEP`), a
PyTorch state dict in torchvision or timm naming (`.safetensors`, `.pth`,
`.pt`, `.bin`), or a hub name (`hf-hub:timm/resnet50.a1_in1k`); the last two
are read by pretrained.py. Only the model's variables are taken (parameters
and BatchNorm statistics): the optimizer state, step and history start anew.
Everything is checked before the run's workdir changes.
"""

import dataclasses
import hashlib
import os
import re
from typing import Optional

import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import augmentation
import checkpointing
import pretrained
import steps
import workdir_files

# Our models' classifiers, left new by default when fine-tuning from a run
# of ours (init_exclude empty): the last Dense layer of each.
HEADS = {'cnn': r'^Dense_1/', 'mlp': r'^Dense_1/', 'resnet18': r'^Dense_0/',
         'resnet34': r'^Dense_0/', 'resnet50': r'^Dense_0/',
         'resnet20': r'^Dense_0/', 'vit_tiny': r'^head/',
         'vit_small': r'^head/', 'vit_base': r'^head/',
         'convnext_atto': r'^head/fc/', 'convnext_tiny': r'^head/fc/'}
ACCEPTED = ('accepted: a training workdir (its best checkpoint; W:latest or '
            'W:STEP for another), a checkpoint folder W/checkpoints/STEP, a '
            '.safetensors or PyTorch (.pth, .pt, .bin) state dict, or '
            'hf-hub:ORG/REPO')


class WarmStartError(ValueError):
  """An init_from source that cannot be used; the message says why."""


@dataclasses.dataclass
class Source:
  """What the weights came from, as the checkpoint and summary record it."""
  init_from: str
  kind: str  # 'run', 'state_dict' or 'hub'.
  path: str = ''
  step: Optional[int] = None
  sha256: str = ''
  summary: str = ''
  pretrained_cfg: dict = dataclasses.field(default_factory=dict)

  def normalize(self) -> str:
    """The config.normalize these weights expect: the hub's mean/std, else
    torchvision's (imagenet)."""
    cfg = self.pretrained_cfg
    if not cfg.get('mean') or (tuple(cfg['mean']), tuple(
        cfg['std'])) == augmentation.NORMALIZATIONS['imagenet']:
      return 'imagenet'
    return (f'{",".join(map(str, cfg["mean"]))}/'
            f'{",".join(map(str, cfg["std"]))}')

  def preprocessing(self) -> dict:
    """config keys (normalize, eval_crop_pct, interpolation) -> the value
    these weights were trained or evaluated with, as far as known: a run of
    ours says nothing (its own config applies), PyTorch weights expect
    ImageNet normalization, a hub config.json says all three."""
    if self.kind == 'run':
      return {}
    keys = {'normalize': self.normalize()}
    cfg = self.pretrained_cfg
    if isinstance(cfg.get('crop_pct'), (int, float)) and (
        0 < cfg['crop_pct'] <= 1):
      keys['eval_crop_pct'] = float(cfg['crop_pct'])
    if cfg.get('interpolation') in ('bilinear', 'bicubic'):
      keys['interpolation'] = cfg['interpolation']
    return keys

  def record(self) -> dict:
    return {k: v for k, v in dataclasses.asdict(self).items() if v not in (
        '', None, {})}


def preprocessing_advice(source: Source, config) -> tuple:
  """(what the weights expect, what this config does differently and the
  flags that would match) as log lines; None for a line with nothing to
  say."""
  expected = source.preprocessing()
  differ = {k: v for k, v in expected.items() if config[k] != v}
  info = warning = None
  if expected:
    info = 'These weights expect ' + ', '.join(
        f'{k}={v}' for k, v in expected.items()) + (
            ' (the hub config.json)' if source.pretrained_cfg else '')
  if differ:
    warning = ('This run uses ' + ', '.join(
        f'{k}={config[k]}' for k in differ) +
               ' instead; to match the weights add ' + ' '.join(
                   f'--config.{k}={v}' for k, v in differ.items()))
  return info, warning


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _run_checkpoint(init_from: str) -> tuple[str, int]:
  """(checkpoints folder, step) of an init_from naming a run of ours."""
  if os.path.isdir(init_from) and os.path.basename(
      os.path.normpath(init_from)).isdigit():
    path = os.path.normpath(init_from)
    return os.path.dirname(path), int(os.path.basename(path))
  workdir, which = init_from, 'best'
  if not os.path.isdir(workdir) and ':' in init_from:
    workdir, which = init_from.rsplit(':', 1)
  directory = workdir_files.checkpoint_dir(workdir)
  kept = checkpointing.finished_steps(directory)
  if not kept:
    raise WarmStartError(f'init_from {init_from!r}: no checkpoints in '
                         f'{directory}; {ACCEPTED}')
  if which == 'latest':
    return directory, kept[-1]
  if which == 'best':
    best = checkpointing.find_best_step(directory)
    return directory, kept[-1] if best is None else best
  if which.isdigit() and int(which) in kept:
    return directory, int(which)
  raise WarmStartError(f'init_from {init_from!r}: {which!r} is not best, '
                       f'latest or one of the steps {kept}')


def read_run(init_from: str) -> tuple[dict, Source]:
  """The model variables ({'params', 'batch_stats', ...}, numpy) of a
  checkpoint of ours; the EMA ones when that run evaluated with them."""
  directory, step = _run_checkpoint(init_from)
  path = os.path.join(directory, str(step))
  try:
    meta = checkpointing.read_meta(directory, step)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
      # No target: the saved tree comes back as dicts, whatever optimizer
      # or metrics the other run had; only its model variables are used.
      state = checkpointer.restore(path, args=ocp.args.Composite(
          state=ocp.args.StandardRestore())).state
    finally:
      checkpointer.close()
  except Exception as e:  # pylint: disable=broad-except
    raise WarmStartError(f'init_from {init_from!r}: checkpoint {path} cannot '
                         f'be read ({pretrained.first_line(e)}); '
                         f'{ACCEPTED}') from None
  use_ema = bool(meta.get('config', {}).get('eval_with_ema'))
  variables = (state['ema_variables'] if use_ema and state.get(
      'ema_variables') else {'params': state['params'],
                             **(state.get('model_state') or {})})
  variables = jax.tree.map(np.asarray, variables)
  source = Source(init_from=init_from, kind='run', path=path, step=step,
                  summary=f'step {step} of {directory}' +
                  (' (its EMA variables)' if use_ema else ''))
  return variables, source


def fit_run_variables(loaded: dict, template: dict, exclude: str,
                      head: str) -> tuple[dict, list[str]]:
  """`template` (the model's fresh variables) with every tensor of `loaded`
  that has the same path; the paths `exclude` matches (default `head`) and
  a head of another shape (other classes) stay new.

  Returns:
    (variables, what was left new).
  Raises:
    WarmStartError: every missing, unused and wrongly shaped path at once.
  """
  want = traverse_util.flatten_dict(flax.core.unfreeze(template), sep='/')
  have = traverse_util.flatten_dict(loaded, sep='/')
  pattern = exclude or head
  out, left_new, missing, wrong = dict(want), [], [], []
  for path, value in want.items():
    name = path.split('/', 1)[1]  # Without the collection.
    if re.search(pattern, name):
      left_new.append(f'{name} (init_exclude {pattern!r})')
      continue
    if path not in have:
      missing.append(path)
      continue
    if have[path].shape != value.shape:
      if re.search(head, name):
        left_new.append(f'{name} ({have[path].shape} in the source, '
                        f'{value.shape} here: other classes)')
        continue
      wrong.append(f'{path} {list(have[path].shape)} (model '
                   f'{list(value.shape)})')
      continue
    out[path] = jnp.asarray(have[path], value.dtype)
  unused = [p for p in have if p not in want and not re.search(
      pattern, p.split('/', 1)[-1])]
  if missing or unused or wrong:
    raise WarmStartError('the source does not fit the model: ' + '; '.join(
        f'{what}: {", ".join(paths[:8])}' + (
            f' and {len(paths) - 8} more' if len(paths) > 8 else '')
        for what, paths in (('missing', missing), ('unused', unused),
                            ('wrong shape', wrong)) if paths) +
                         ' (the same model and model_kwargs are accepted)')
  return traverse_util.unflatten_dict(out, sep='/'), left_new


def load(init_from: str, model_name: str, template: dict,
         init_exclude: str = '') -> tuple[dict, Source]:
  """The variables to start from, fitted onto `template` (the model's
  fresh variables, which keep what is left new), and their source."""
  if init_from.startswith(pretrained.HUB_PREFIX) or (
      os.path.isfile(init_from) and not os.path.isdir(init_from)):
    if model_name not in pretrained.ARCHS:
      raise WarmStartError(
          f'init_from {init_from!r}: PyTorch weights fit the models '
          f'{", ".join(pretrained.ARCHS)}, not {model_name!r}')
    try:
      variables, report = pretrained.load_pretrained(
          init_from, model_name, template, exclude_regexes=(
              (init_exclude,) if init_exclude else pretrained.HEAD_REGEXES))
    except pretrained.PretrainedError as e:
      raise WarmStartError(' '.join(str(e).split())) from None
    is_hub = init_from.startswith(pretrained.HUB_PREFIX)
    source = Source(init_from=init_from, kind='hub' if is_hub else
                    'state_dict', path='' if is_hub else
                    os.path.abspath(init_from),
                    sha256='' if is_hub else sha256(init_from),
                    summary=report.summary(),
                    pretrained_cfg=report.pretrained_cfg)
    return variables, source
  if not os.path.isdir(init_from.rsplit(':', 1)[0]) and not os.path.isdir(
      init_from):
    raise WarmStartError(f'init_from {init_from!r} does not exist; '
                         f'{ACCEPTED}')
  loaded, source = read_run(init_from)
  variables, left_new = fit_run_variables(
      loaded, template, init_exclude, HEADS.get(model_name, r'$^'))
  count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(
      template.get('params', {})))
  source.summary = (f'{model_name} from {source.summary}; {count:,} '
                    f'parameters' + (f'; left new: {", ".join(left_new)}'
                                     if left_new else ''))
  return variables, source


def start_from(state: steps.TrainState, variables: dict,
               tx) -> steps.TrainState:
  """`state` (fresh, step 0) with `variables` as its parameters and model
  state; a fresh optimizer state for them, and the EMA starting there."""
  variables = dict(variables)
  params = variables.pop('params')
  return state.replace(
      params=params, model_state=variables, opt_state=tx.init(params),
      ema_variables=None if state.ema_variables is None else jax.tree.map(
          jnp.copy, {'params': params, **variables}))

