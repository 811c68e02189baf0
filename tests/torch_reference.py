"""Plain-PyTorch ResNets, ViTs and ConvNeXts in torchvision's and timm's
layouts, for parity tests.

PyPI's torchvision does not import beside the CPU build of torch that
requirements-extras.txt installs ('operator torchvision::nms does not
exist'), and timm imports torchvision, so the tests build the models here:
the same modules, registered in the same order, hence the same
`state_dict()` keys, shapes and order, and the same forward pass.

* ResNet-18/34/50 as torchvision's (checked against
  tests/fixtures/torchvision_resnet_state_dicts.json, written by torchvision
  itself): ResNet v1.5 (the bottleneck's stride on its 3x3 conv), a 3x3/2
  max-pool padded by 1, BatchNorm eps 1e-5 and momentum 0.1.
* timm's VisionTransformer and ConvNeXt without their options (checked
  against tests/fixtures/timm_vit_convnext_state_dicts.json, read from
  timm's source): LayerNorm eps 1e-6, erf GELU, a class token and learned
  position embeddings, layer scale `gamma`, timm's conv_mlp (1x1
  convolutions and a channels-first LayerNorm) for the small ConvNeXts.
"""

import functools

import torch
from torch import nn


def conv3x3(inplanes, planes, stride=1):
  return nn.Conv2d(inplanes, planes, 3, stride, padding=1, bias=False)


def conv1x1(inplanes, planes, stride=1):
  return nn.Conv2d(inplanes, planes, 1, stride, bias=False)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions and a shortcut."""
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(y + shortcut)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 with the stride (v1.5), 1x1 expand by 4, a shortcut."""
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = conv1x1(inplanes, planes)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = conv3x3(planes, planes, stride)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = conv1x1(planes, planes * self.expansion)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(y + shortcut)


class ResNet(nn.Module):
  """torchvision.models.ResNet without its options (groups, dilation,
  zero-init): 7x7/2 stem, max-pool, four stages, average pool, fc."""

  def __init__(self, block, layers, num_classes=1000, in_chans=3):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, 64, layers[0])
    self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
    self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
    self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * block.expansion, num_classes)

  def _make_layer(self, block, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          conv1x1(self.inplanes, planes * block.expansion, stride),
          nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


# name -> (block, blocks per stage), as torchvision.models.resnetNN.
ARCHS = {
    'resnet18': (BasicBlock, (2, 2, 2, 2)),
    'resnet34': (BasicBlock, (3, 4, 6, 3)),
    'resnet50': (Bottleneck, (3, 4, 6, 3)),
}


def create_resnet(arch: str, num_classes: int = 1000,
                  in_chans: int = 3) -> ResNet:
  """torchvision's `arch` with PyTorch's default initialisation."""
  block, layers = ARCHS[arch]
  return ResNet(block, layers, num_classes, in_chans)


def randomize_batchnorm(model: nn.Module, images: torch.Tensor,
                        seed: int = 0) -> nn.Module:
  """Gives every BatchNorm random affine parameters and running statistics
  measured on `images` (a train-mode pass), then sets eval mode.

  The defaults (1s and 0s) would hide a swapped scale/bias or mean/var, and
  measured statistics keep activations near unit scale through the depth,
  so the logits depend on the image and not just on fc's bias.
  """
  generator = torch.Generator().manual_seed(seed)
  norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  with torch.no_grad():
    for norm in norms:
      norm.weight.copy_(torch.rand(norm.num_features, generator=generator)
                        + 0.5)
      norm.bias.copy_(torch.randn(norm.num_features, generator=generator)
                      * 0.1)
      norm.momentum = None  # A cumulative average: this batch's statistics.
    model.train()
    model(images)
  for norm in norms:
    norm.momentum = 0.1
  return model.eval()


class Attention(nn.Module):
  """timm's Attention: one qkv Linear, split (q/k/v, head, head_dim)."""

  def __init__(self, dim, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, dim * 3)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads,
                              c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
  """timm's Mlp: fc1, GELU, fc2; 1x1 convolutions with `conv` (conv_mlp)."""

  def __init__(self, dim, hidden, conv=False):
    super().__init__()
    layer = functools.partial(nn.Conv2d, kernel_size=1) if conv else nn.Linear
    self.fc1 = layer(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = layer(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


def layer_norm(dim):
  return nn.LayerNorm(dim, eps=1e-6)


class TransformerBlock(nn.Module):
  """timm's vision_transformer.Block: pre-norm attention and MLP."""

  def __init__(self, dim, num_heads, mlp_ratio=4):
    super().__init__()
    self.norm1 = layer_norm(dim)
    self.attn = Attention(dim, num_heads)
    self.norm2 = layer_norm(dim)
    self.mlp = Mlp(dim, dim * mlp_ratio)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
  """timm's PatchEmbed: a patch-sized, patch-strided conv, flattened."""

  def __init__(self, patch_size, in_chans, dim):
    super().__init__()
    self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
  """timm's VisionTransformer with a class token, learned position
  embeddings and global_pool 'token' (norm) or 'avg' (fc_norm)."""

  def __init__(self, embed_dim, depth, num_heads, patch_size=16,
               img_size=224, num_classes=1000, in_chans=3,
               global_pool='token'):
    super().__init__()
    self.global_pool = global_pool
    self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
    tokens = (img_size[0] // patch_size) * (img_size[1] // patch_size) if (
        isinstance(img_size, tuple)) else (img_size // patch_size) ** 2
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, embed_dim) * .02)
    self.blocks = nn.Sequential(*[TransformerBlock(embed_dim, num_heads)
                                  for _ in range(depth)])
    avg = global_pool == 'avg'
    self.norm = nn.Identity() if avg else layer_norm(embed_dim)
    self.fc_norm = layer_norm(embed_dim) if avg else nn.Identity()
    self.head = nn.Linear(embed_dim, num_classes)

  def forward(self, x):
    x = self.patch_embed(x)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = self.norm(self.blocks(x + self.pos_embed))
    x = x[:, 1:].mean(dim=1) if self.global_pool == 'avg' else x[:, 0]
    return self.head(self.fc_norm(x))


class LayerNorm2d(nn.LayerNorm):
  """timm's LayerNorm2d: LayerNorm over the channels of NCHW."""

  def __init__(self, dim):
    super().__init__(dim, eps=1e-6)

  def forward(self, x):
    return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
  """timm's ConvNeXtBlock: depthwise 7x7, norm, MLP, layer scale gamma."""

  def __init__(self, dim, conv_mlp):
    super().__init__()
    self.conv_mlp = conv_mlp
    self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
    self.norm = LayerNorm2d(dim) if conv_mlp else layer_norm(dim)
    self.mlp = Mlp(dim, 4 * dim, conv=conv_mlp)
    self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

  def forward(self, x):
    y = self.conv_dw(x)
    if self.conv_mlp:
      y = self.mlp(self.norm(y))
    else:
      y = self.mlp(self.norm(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    return x + y * self.gamma.reshape(1, -1, 1, 1)


class ConvNeXtStage(nn.Module):
  """timm's ConvNeXtStage: downsample (norm, 2x2/2 conv) where the width
  changes, then the blocks."""

  def __init__(self, in_dim, dim, depth, conv_mlp):
    super().__init__()
    self.downsample = nn.Identity() if in_dim == dim else nn.Sequential(
        LayerNorm2d(in_dim), nn.Conv2d(in_dim, dim, 2, 2))
    self.blocks = nn.Sequential(*[ConvNeXtBlock(dim, conv_mlp)
                                  for _ in range(depth)])

  def forward(self, x):
    return self.blocks(self.downsample(x))


class NormMlpClassifierHead(nn.Module):
  """timm's NormMlpClassifierHead without a hidden layer: average pool,
  norm, fc."""

  def __init__(self, dim, num_classes):
    super().__init__()
    self.norm = LayerNorm2d(dim)
    self.fc = nn.Linear(dim, num_classes)

  def forward(self, x):
    return self.fc(self.norm(x.mean(dim=(2, 3), keepdim=True)).flatten(1))


class ConvNeXt(nn.Module):
  """timm's ConvNeXt with its 'patch' stem (4x4/4 conv, norm)."""

  def __init__(self, depths, dims, conv_mlp=False, num_classes=1000,
               in_chans=3):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, 4),
                              LayerNorm2d(dims[0]))
    self.stages = nn.Sequential(*[
        ConvNeXtStage(dims[max(i - 1, 0)], dims[i], depths[i], conv_mlp)
        for i in range(len(depths))])
    self.head = NormMlpClassifierHead(dims[-1], num_classes)

  def forward(self, x):
    return self.head(self.stages(self.stem(x)))


# timm name -> its constructor's arguments, as timm's registrations.
VIT_ARCHS = {
    'vit_tiny_patch16_224': dict(embed_dim=192, depth=12, num_heads=3),
    'vit_small_patch16_224': dict(embed_dim=384, depth=12, num_heads=6),
}
CONVNEXT_ARCHS = {
    'convnext_atto': dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320),
                          conv_mlp=True),
    'convnext_tiny': dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
}


def create_timm(name: str, **kwargs) -> nn.Module:
  """timm's `name` (a key of VIT_ARCHS or CONVNEXT_ARCHS) with PyTorch's
  default initialisation; kwargs as timm.create_model's (img_size,
  num_classes, global_pool, ...)."""
  if name in VIT_ARCHS:
    return VisionTransformer(**VIT_ARCHS[name], **kwargs)
  return ConvNeXt(**CONVNEXT_ARCHS[name], **kwargs)


def randomize_timm(model: nn.Module, seed: int = 0) -> nn.Module:
  """Gives every LayerNorm random affine parameters and random layer
  scales, class token and position embeddings, then sets eval mode.

  Their inits (1s and 0s, gamma 1e-6) would hide a swapped weight/bias, a
  block left out (gamma 1e-6 makes it nearly the identity) or a class
  token out of place.
  """
  generator = torch.Generator().manual_seed(seed)
  # Standard deviations: larger embeddings than 0.2 would drown the
  # patches, and the logits would hardly depend on the image.
  scales = {'gamma': 0.5, 'cls_token': 0.2, 'pos_embed': 0.2}

  def rand(shape, scale, offset=0.0):
    return torch.randn(shape, generator=generator) * scale + offset
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.LayerNorm):
        module.weight.copy_(rand(module.weight.shape, 0.2, 1.0))
        module.bias.copy_(rand(module.bias.shape, 0.1))
    for name, param in model.named_parameters():
      leaf = name.rsplit('.', 1)[-1]
      if leaf in scales:
        param.copy_(rand(param.shape, scales[leaf]))
  return model.eval()
