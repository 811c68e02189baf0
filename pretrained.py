"""Pretrained weights from torchvision and timm for the models of models.py.

Three steps, each a function: `read_state_dict` reads a file (.safetensors
without PyTorch; .pth/.pt/.bin with it) into numpy arrays, `read_hub` fetches
a `hf-hub:ORG/REPO` model (or finds it in the Hugging Face cache when
offline) with its preprocessing config, and `to_flax` maps a state dict by
name onto an initialised Flax variables tree, checking every shape and
reporting every mismatch at once. `load_pretrained` chains them.

Each architecture family (FAMILIES) says how its torch keys are named:

* ResNets: torchvision and timm name a plain ResNet's tensors identically
  (conv1, bn1, layerN.M.convK/bnK, layerN.0.downsample.0/1, fc; checked
  against both in tests/fixtures/), and models.py builds the same modules
  in the same order, so the mapping is one to one: Flax's Conv_K/BatchNorm_K
  inside the global BasicBlock_B/Bottleneck_B are torch's convK+1/bnK+1 of
  block B counted over the stages, and the block's last Conv/BatchNorm is
  its downsample.
* ViTs (vit.py) and ConvNeXts (convnext.py) carry timm's module names, so
  the key is the Flax path with '/' and '_N' written '.' and '.N'
  (blocks_3/attn/qkv/kernel is blocks.3.attn.qkv.weight; `timm_name`).
"""

import dataclasses
import json
import os
import re
from typing import Any, Callable, Mapping

import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
# Registers bfloat16 with numpy, which safetensors' numpy route needs.
import ml_dtypes  # pylint: disable=unused-import
import numpy as np

import models

# Architectures with a torchvision/timm counterpart: name -> family.
ARCHS = {'resnet18': 'resnet', 'resnet34': 'resnet', 'resnet50': 'resnet',
         'vit_tiny': 'vit', 'vit_small': 'vit', 'vit_base': 'vit',
         'convnext_atto': 'convnext', 'convnext_tiny': 'convnext'}
# A ResNet block's convolutions in its residual branch (the downsample is
# the next Conv_K).
CONVS_PER_BLOCK = {'BasicBlock': 2, 'Bottleneck': 3}
# timm's learned position embeddings, resampled to another grid of patches.
POS_EMBED_KEY = 'pos_embed'
HUB_PREFIX = 'hf-hub:'
HUB_WEIGHTS = 'model.safetensors'
HUB_CONFIG = 'config.json'
# What of timm's config.json `pretrained_cfg` the input pipeline needs.
PRETRAINED_CFG_KEYS = ('mean', 'std', 'interpolation', 'crop_pct',
                       'input_size')
TORCH_SUFFIXES = ('.pth', '.pt', '.bin')
ACCEPTED = ('accepted: .safetensors, or a PyTorch state dict of tensors '
            '(.pth, .pt, .bin), bare or under "state_dict", "model" or '
            '"state_dict_ema"')
# Checkpoint wrappers (torchvision's and timm's training scripts, DDP,
# torch.compile): unwrapped in this order.
CONTAINERS = ('state_dict', 'model', 'state_dict_ema', 'model_ema')
EMA_CONTAINERS = ('state_dict_ema', 'model_ema', 'state_dict', 'model')
PREFIXES = ('module.', '_orig_mod.')
# (collection, Flax module kind, leaf) -> torch's tensor suffix.
LEAF_NAMES = {
    ('params', 'Conv', 'kernel'): 'weight',
    ('params', 'BatchNorm', 'scale'): 'weight',
    ('params', 'BatchNorm', 'bias'): 'bias',
    ('batch_stats', 'BatchNorm', 'mean'): 'running_mean',
    ('batch_stats', 'BatchNorm', 'var'): 'running_var',
    ('params', 'Dense', 'kernel'): 'weight',
    ('params', 'Dense', 'bias'): 'bias',
}


# A Flax leaf -> timm's name for it (others keep theirs: bias, cls_token,
# pos_embed, gamma).
TIMM_LEAVES = {'kernel': 'weight', 'scale': 'weight'}


class PretrainedError(ValueError):
  """Weights that cannot be read or do not fit the model; says which and why."""


@dataclasses.dataclass
class LoadReport:
  """What `to_flax` did, for one log line (`summary()`).

  Attributes:
    arch: the model name.
    loaded: Flax paths ('params/Conv_0/kernel') set from the weights.
    left_new: Flax path -> why it kept the model's fresh init.
    ignored: keys of the weights used for nothing, on purpose
      (num_batches_tracked, excluded or re-sized head).
    notes: conversions beyond the layout (e.g. a summed grayscale stem).
    loaded_params: parameters (the `params` collection) loaded.
    total_params: parameters of the model.
    source: where the weights came from (set by `load_pretrained`).
    pretrained_cfg: timm's preprocessing of the weights (mean, std,
      interpolation, crop_pct, input_size) where the source has it.
  """
  arch: str
  loaded: list[str]
  left_new: dict[str, str]
  ignored: list[str]
  notes: list[str]
  loaded_params: int
  total_params: int
  source: str = ''
  pretrained_cfg: dict[str, Any] = dataclasses.field(default_factory=dict)

  def summary(self) -> str:
    """One line: what was loaded, what was left new, parameter counts."""
    tensors = len(self.loaded) + len(self.left_new)
    line = (f'{self.arch} from {self.source or "a state dict"}: loaded '
            f'{len(self.loaded)}/{tensors} tensors, {self.loaded_params:,} '
            f'of {self.total_params:,} parameters')
    by_reason = {}
    for path, reason in self.left_new.items():
      module = path.split('/', 1)[1].rsplit('/', 1)[0]
      by_reason.setdefault(reason, []).append(module)
    for reason, modules in by_reason.items():
      line += f'; left new: {", ".join(dict.fromkeys(modules))} ({reason})'
    return '; '.join([line, *self.notes])


def read_state_dict(path: str, *, ema: bool = False) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict into numpy, floating tensors as float32.

  Args:
    path: a .safetensors file (read without PyTorch, bfloat16 included) or a
      .pth/.pt/.bin file (torch.load with weights_only=True: tensors only).
    ema: from a training checkpoint holding both, take the EMA weights
      (state_dict_ema/model_ema) instead of state_dict/model.

  Returns:
    {torch key: array}, any container and `module.`/`_orig_mod.` prefix
    removed.

  Raises:
    PretrainedError: a missing, truncated or corrupt file, one that is not a
      state dict, or a .pth without PyTorch installed; one line.
  """
  if not os.path.isfile(path):
    raise PretrainedError(f'{path}: no such file; {ACCEPTED}')
  if path.endswith('.safetensors'):
    tensors = _read_safetensors(path)
  elif path.endswith(TORCH_SUFFIXES):
    tensors = _read_torch(path)
  else:
    raise PretrainedError(f'{path}: unknown file type; {ACCEPTED}')
  for key in EMA_CONTAINERS if ema else CONTAINERS:
    if isinstance(tensors, Mapping) and isinstance(tensors.get(key),
                                                    Mapping):
      tensors = tensors[key]
      break
  if (not isinstance(tensors, Mapping) or not tensors or not all(
      isinstance(k, str) and isinstance(v, np.ndarray)
      for k, v in tensors.items())):
    raise PretrainedError(f'{path} is not a state dict (a mapping of names '
                          f'to tensors); {ACCEPTED}')
  for prefix in PREFIXES:
    if all(k.startswith(prefix) for k in tensors):
      tensors = {k[len(prefix):]: v for k, v in tensors.items()}
  # Integers (num_batches_tracked) stay; bfloat16/float16 become float32.
  return {k: v if v.dtype.kind in 'biu' else v.astype(np.float32)
          for k, v in tensors.items()}


def _read_safetensors(path):
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  try:
    with safe_open(path, framework='numpy') as f:
      return {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:  # pylint: disable=broad-except
    raise PretrainedError(f'{path} is truncated or not a safetensors file '
                          f'({first_line(e)}); {ACCEPTED}') from e


def _read_torch(path):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise PretrainedError(
        f'{path}: reading .pth/.pt/.bin files needs PyTorch, which is not '
        f'installed: pip install -r requirements-extras.txt, or convert the '
        f'file to .safetensors, which needs no PyTorch') from e
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise PretrainedError(f'{path} could not be read as a state dict '
                          f'({first_line(e)}); {ACCEPTED}') from e

  def to_numpy(value):
    if isinstance(value, torch.Tensor):
      value = value.detach().cpu()
      # numpy has no bfloat16: widen every float before converting.
      return (value.float() if value.is_floating_point() else value).numpy()
    if isinstance(value, Mapping):
      return {k: to_numpy(v) for k, v in value.items()}
    return value
  return to_numpy(loaded)


def first_line(error, limit=200):
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0][:limit] if text else ""}'


def hub_cache_dir() -> str:
  """The Hugging Face hub cache, by huggingface_hub's rules, read now.

  huggingface_hub fixes its own at import; reading the variables at call
  time lets a process (or a test) point HF_HUB_CACHE/HF_HOME elsewhere.
  """
  home = os.environ.get('HF_HOME') or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.join(
          os.path.expanduser('~'), '.cache'), 'huggingface')
  cache = (os.environ.get('HF_HUB_CACHE')
           or os.environ.get('HUGGINGFACE_HUB_CACHE')
           or os.path.join(home, 'hub'))
  return os.path.expandvars(os.path.expanduser(cache))


def _hub_offline() -> bool:
  value = os.environ.get('HF_HUB_OFFLINE') or os.environ.get(
      'TRANSFORMERS_OFFLINE') or ''
  return value.upper() in ('1', 'ON', 'YES', 'TRUE')


def read_hub(name: str, *, cache_dir: str | None = None
             ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads `hf-hub:ORG/REPO`'s model.safetensors and its config.json.

  Downloads into the Hugging Face cache, or reads the cache when offline
  (HF_HUB_OFFLINE=1, or no network).

  Args:
    name: 'hf-hub:ORG/REPO', e.g. 'hf-hub:timm/resnet50.a1_in1k'.
    cache_dir: the hub cache; default `hub_cache_dir()`.

  Returns:
    (state dict as `read_state_dict` gives it, the PRETRAINED_CFG_KEYS of
    config.json's `pretrained_cfg`; {} without one).

  Raises:
    PretrainedError: huggingface_hub missing, or the weights neither in the
      cache nor downloadable (one line naming repo, file and cache path).
  """
  repo_id = name[len(HUB_PREFIX):] if name.startswith(HUB_PREFIX) else name
  cache_dir = cache_dir or hub_cache_dir()
  weights = _hub_file(repo_id, HUB_WEIGHTS, cache_dir, required=True)
  config_path = _hub_file(repo_id, HUB_CONFIG, cache_dir, required=False)
  config = {}
  if config_path:
    with open(config_path, encoding='utf-8') as f:
      config = json.load(f).get('pretrained_cfg', {})
  return read_state_dict(weights), {k: config[k] for k in PRETRAINED_CFG_KEYS
                                    if k in config}


def _hub_file(repo_id, filename, cache_dir, required):
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise PretrainedError(f'{HUB_PREFIX}{repo_id} needs huggingface_hub, '
                          f'which is not installed: pip install -r '
                          f'requirements-extras.txt') from e
  offline = _hub_offline()
  try:
    return huggingface_hub.hf_hub_download(
        repo_id, filename, cache_dir=cache_dir, local_files_only=offline)
  except Exception as e:  # pylint: disable=broad-except
    if not required:
      return None
    if offline:
      why = 'HF_HUB_OFFLINE is set'
    elif isinstance(e, huggingface_hub.errors.LocalEntryNotFoundError):
      why = 'the Hub could not be reached'
    else:  # The Hub answered: no such repo or file, no access.
      why = first_line(e)
    folder = os.path.join(cache_dir, 'models--' + repo_id.replace('/', '--'))
    raise PretrainedError(
        f'{HUB_PREFIX}{repo_id}: {filename} is not in the Hugging Face cache '
        f'and could not be downloaded ({why}); fetch it where the Hub can be '
        f'reached (hf download {repo_id} {filename} {HUB_CONFIG}) and copy '
        f'that cache\'s {os.path.basename(folder)} folder to {folder} '
        f'(snapshots/<revision>/{filename}, refs/main holding <revision>)'
    ) from e


def detect_naming(keys) -> str:
  """Names the convention of a state dict's keys: a family's `naming`
  ('torchvision', which timm's plain ResNets share exactly; 'timm_vit';
  'timm_convnext').

  Raises:
    PretrainedError: a known convention models.py cannot take (timm's
      deep-stem variants, Hugging Face transformers), or an unknown one.
  """
  keys = set(keys)
  for family in FAMILIES.values():
    if all(k in keys for k in family.marks):
      return family.naming
  if 'conv1.0.weight' in keys:
    raise PretrainedError(
        'these weights have a deep 3x3 stem (conv1.0, conv1.1, ...: timm\'s '
        'resnet*c/d/s/t variants); models.py\'s ResNets have one 7x7 stem '
        'conv: take the plain variant, e.g. hf-hub:timm/resnet50.a1_in1k')
  if any(k.startswith(('embedder.', 'resnet.embedder.')) for k in keys):
    raise PretrainedError(
        'these weights use Hugging Face transformers\' ResNet naming '
        '(embedder, encoder.stages); take the timm or torchvision weights, '
        'e.g. hf-hub:timm/resnet50.a1_in1k')
  raise PretrainedError(
      f'unrecognised key names (e.g. {", ".join(sorted(keys)[:3])}); '
      f'accepted: ' + '; '.join(f.described for f in FAMILIES.values()))


def torch_name(path: tuple[str, ...], stage_sizes, convs_per_block: int
               ) -> str:
  """torchvision's key for a Flax variable path of a ResNet.

  E.g. ('params', 'Bottleneck_3', 'Conv_1', 'kernel') -> 'layer2.0.conv2.weight'
  for stage sizes (3, 4, 6, 3); the block's Conv_3/BatchNorm_3 are its
  downsample.0/1.
  """
  collection, *modules, leaf = path
  kind, index = modules[-1].rsplit('_', 1)
  suffix = LEAF_NAMES.get((collection, kind, leaf))
  if suffix is None or len(modules) > 2:
    raise PretrainedError(f'no torchvision name for {"/".join(path)}')
  if len(modules) == 1:
    module = {'Conv': 'conv1', 'BatchNorm': 'bn1', 'Dense': 'fc'}[kind]
    return f'{module}.{suffix}'
  block = int(modules[0].rsplit('_', 1)[1])
  stage = 0
  while block >= stage_sizes[stage]:
    block -= stage_sizes[stage]
    stage += 1
  if int(index) < convs_per_block:
    module = f'{"conv" if kind == "Conv" else "bn"}{int(index) + 1}'
  else:
    module = f'downsample.{0 if kind == "Conv" else 1}'
  return f'layer{stage + 1}.{block}.{module}.{suffix}'


def timm_name(path: tuple[str, ...]) -> str:
  """timm's key for a Flax variable path of a model named as timm's.

  E.g. ('params', 'blocks_3', 'attn', 'qkv', 'kernel') ->
  'blocks.3.attn.qkv.weight', ('params', 'stem_1', 'scale') ->
  'stem.1.weight', ('params', 'cls_token') -> 'cls_token'.
  """
  collection, *modules, leaf = path
  if collection != 'params':
    raise PretrainedError(f'no timm name for {"/".join(path)}')
  return '.'.join([re.sub(r'_(\d+)$', r'.\1', m) for m in modules]
                  + [TIMM_LEAVES.get(leaf, leaf)])


def _resnet_names(arch):
  constructor = models.MODELS[arch]
  return lambda path: torch_name(
      path, constructor.keywords['stage_sizes'],
      CONVS_PER_BLOCK[constructor.keywords['block'].__name__])


@dataclasses.dataclass(frozen=True)
class Family:
  """What differs between architecture families' torch weights.

  Attributes:
    naming: what `detect_naming` calls these keys.
    marks: keys every state dict of the family has.
    described: the naming in words, for errors.
    head: regex (re.search) of the classifier's keys; it must match no key
      of another family (HEAD_REGEXES holds them all).
    stem_key: the first convolution, adapted to the images' channels.
    names: arch -> (Flax variable path -> torch key).
  """
  naming: str
  marks: tuple[str, ...]
  described: str
  head: str
  stem_key: str
  names: Callable[[str], Callable[[tuple[str, ...]], str]]


FAMILIES = {
    'resnet': Family(
        'torchvision', ('conv1.weight', 'layer1.0.conv1.weight'),
        'torchvision/timm ResNet naming (conv1, bn1, layer1.0.conv1, '
        'layer1.0.downsample.0, fc)', r'^fc\.', 'conv1.weight',
        _resnet_names),
    'vit': Family(
        'timm_vit', ('patch_embed.proj.weight', 'blocks.0.attn.qkv.weight'),
        'timm ViT naming (cls_token, pos_embed, patch_embed.proj, '
        'blocks.0.attn.qkv, norm, head)', r'^head\.(weight|bias)$',
        'patch_embed.proj.weight', lambda arch: timm_name),
    'convnext': Family(
        'timm_convnext', ('stem.0.weight', 'stages.0.blocks.0.conv_dw.weight'),
        'timm ConvNeXt naming (stem.0, stages.0.blocks.0.conv_dw, '
        'stages.1.downsample.0, head.norm, head.fc)', r'^head\.fc\.',
        'stem.0.weight', lambda arch: timm_name),
}
# Every family's classifier, left new by default (fine-tuning is usually on
# other classes); each pattern matches its own family's keys only.
HEAD_REGEXES = tuple(family.head for family in FAMILIES.values())


def _torch_layout(path, shape):
  """The torch shape of a Flax variable: OIHW for convolutions, (out, in)
  for dense kernels."""
  if path[-1] == 'kernel' and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if path[-1] == 'kernel':
    return tuple(reversed(shape))
  return tuple(shape)


def _shape(shape):
  return 'x'.join(map(str, shape)) or 'scalar'


def _flax_layout(array):
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
  return array.T if array.ndim == 2 else array


def _adapt_stem(name, kernel, in_chans):
  """timm's adapt_input_conv: the stem for `in_chans` input channels."""
  if in_chans == 1:
    return kernel.sum(axis=1, keepdims=True), (
        f'{name} summed over its {kernel.shape[1]} input channels for '
        f'1-channel images (as timm does)')
  repeat = -(-in_chans // kernel.shape[1])
  adapted = np.tile(kernel, (1, repeat, 1, 1))[:, :in_chans]
  return adapted * (kernel.shape[1] / in_chans), (
      f'{name} repeated to {in_chans} input channels and scaled by '
      f'{kernel.shape[1]}/{in_chans} (as timm does)')


def _resample_pos_embed(array, want):
  """timm's resample_abs_pos_embed: the patch part of (1, 1 + N, D)
  position embeddings resized as an image to the model's grid, the class
  token's kept; (None, why) where a grid is not square."""
  old, new = array.shape[1] - 1, want[1] - 1
  old_side, new_side = int(round(old ** 0.5)), int(round(new ** 0.5))
  if old_side ** 2 != old or new_side ** 2 != new:
    return None, (f'{POS_EMBED_KEY} {_shape(array.shape)} (model '
                  f'{_shape(want)}; only square grids of patches are '
                  f'resampled)')
  grid = array[0, 1:].reshape(old_side, old_side, array.shape[2])
  grid = jax.image.resize(grid, (new_side, new_side, array.shape[2]),
                          method='bicubic', antialias=True)
  return np.concatenate([array[:, :1], np.asarray(grid, np.float32).reshape(
      1, new, array.shape[2])], axis=1), (
          f'{POS_EMBED_KEY} resampled from a {old_side}x{old_side} to a '
          f'{new_side}x{new_side} grid of patches (bicubic, as timm does), '
          f'the class token\'s kept')


def _fit(name, array, want, stem_key):
  """(array to load, a note or '') or (None, why it cannot load) for torch
  key `name` whose shape in the model, in torch layout, is `want`."""
  if array.shape == want:
    return array, ''
  if array.ndim == 4 and array.shape[2:] == (1, 1) and (
      array.shape[:2] == want):
    # A 1x1 convolution (timm's conv_mlp) is a Dense layer.
    return array.reshape(want), ''
  if (name == stem_key and array.ndim == 4
      and array.shape[:1] + array.shape[2:] == want[:1] + want[2:]):
    return _adapt_stem(name, array, want[1])
  if (name == POS_EMBED_KEY and array.ndim == 3
      and (array.shape[0], array.shape[2]) == (want[0], want[2])):
    return _resample_pos_embed(array, want)
  return None, f'{name} {_shape(array.shape)} (model {_shape(want)})'


def _other_classes(name, shape, want, head):
  """Whether `name` is the head, sized for another number of classes."""
  return bool(re.search(head, name)) and shape != want and (
      shape[1:] == want[1:])


def to_flax(state_dict: Mapping[str, np.ndarray], arch: str, variables, *,
            exclude_regexes=HEAD_REGEXES):
  """Maps a torchvision/timm state dict onto `arch`'s Flax variables.

  Args:
    state_dict: {torch key: array}, as `read_state_dict` gives it.
    arch: a name in ARCHS ('resnet50', 'vit_small', 'convnext_tiny', ...).
    variables: the model's initialised variables ({'params', 'batch_stats'});
      they set every shape and keep their values where nothing is loaded.
    exclude_regexes: patterns (re.search) of torch keys to leave new;
      default the classifier head (fine-tuning). () loads the head too, but
      a head with another number of classes is still left new.

  Returns:
    (variables with the weights in Flax layout, LoadReport).

  Raises:
    PretrainedError: an unknown arch or naming, or weights that do not fit:
      every missing, unused and wrongly shaped key, all in one error.
  """
  if arch not in ARCHS or arch not in models.MODELS:
    raise PretrainedError(f'no torchvision/timm counterpart for model '
                          f'{arch!r}; accepted: {", ".join(ARCHS)}')
  family = FAMILIES[ARCHS[arch]]
  naming = detect_naming(state_dict)
  if naming != family.naming:
    theirs = next(f for f in FAMILIES.values() if f.naming == naming)
    raise PretrainedError(f'these weights are in {theirs.described}; {arch} '
                          f'takes {family.described}')
  torch_key = family.names(arch)
  template = traverse_util.flatten_dict(flax.core.unfreeze(variables))
  names = {path: torch_key(path) for path in template}
  out, loaded, left_new, notes = dict(template), [], {}, []
  missing, wrong = [], []
  for path, name in names.items():
    flax_path, array = '/'.join(path), state_dict.get(name)
    want = _torch_layout(path, template[path].shape)
    rx = next((rx for rx in exclude_regexes if re.search(rx, name)), None)
    if rx:
      left_new[flax_path] = f'excluded by {rx}'
    elif array is None:
      missing.append(name)
    elif _other_classes(name, array.shape, want, family.head):
      left_new[flax_path] = (f'{array.shape[0]} classes in the weights, '
                             f'{want[0]} in the model')
    else:
      array, why = _fit(name, array, want, family.stem_key)
      if array is None:
        wrong.append(why)
        continue
      out[path] = jnp.asarray(_flax_layout(array), template[path].dtype)
      loaded.append(path)
      notes += [why] if why else []
  used = set(names.values())
  unused = [k for k in state_dict if k not in used
            and not k.endswith('.num_batches_tracked')
            and not any(re.search(rx, k) for rx in exclude_regexes)]
  if missing or unused or wrong:
    raise PretrainedError('\n'.join(
        [f'the weights do not fit {arch}: {len(missing)} missing, '
         f'{len(unused)} unused, {len(wrong)} of the wrong shape (torch '
         f'layout); exclude_regexes leaves keys new on purpose'] +
        [f'  {what}: {", ".join(keys)}' for what, keys in (
            ('missing', missing), ('unused', unused), ('wrong shape', wrong))
         if keys]))
  loaded_names = {names[path] for path in loaded}
  sizes = {path: v.size for path, v in template.items() if path[0] == 'params'}
  report = LoadReport(
      arch=arch, loaded=['/'.join(path) for path in loaded],
      left_new=left_new, notes=notes,
      ignored=[k for k in state_dict if k not in loaded_names],
      loaded_params=sum(sizes.get(path, 0) for path in loaded),
      total_params=sum(sizes.values()))
  return traverse_util.unflatten_dict(out), report


def load_pretrained(source: str, arch: str, variables, *,
                    exclude_regexes=HEAD_REGEXES):
  """Reads `source` and maps it onto `arch`'s `variables` (see `to_flax`).

  Args:
    source: a weights file (see `read_state_dict`) or 'hf-hub:ORG/REPO'.
    arch: the model name.
    variables: the model's initialised variables.
    exclude_regexes: torch keys to leave new; default the head.

  Returns:
    (variables, LoadReport with `source` and `pretrained_cfg` set).
  """
  if source.startswith(HUB_PREFIX):
    state_dict, pretrained_cfg = read_hub(source)
  else:
    state_dict, pretrained_cfg = read_state_dict(source), {}
  variables, report = to_flax(state_dict, arch, variables,
                              exclude_regexes=exclude_regexes)
  return variables, dataclasses.replace(report, source=source,
                                        pretrained_cfg=pretrained_cfg)
