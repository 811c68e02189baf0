"""Plain-PyTorch ResNet-18/34/50 in torchvision's layout, for parity tests.

PyPI's torchvision does not import beside the CPU build of torch that
requirements-extras.txt installs ('operator torchvision::nms does not
exist'), so the tests build torchvision's ResNet here: the same modules,
registered in the same order, hence the same `state_dict()` keys, shapes and
order (checked against tests/fixtures/torchvision_resnet_state_dicts.json,
written by torchvision itself) and the same forward pass: ResNet v1.5 (the
bottleneck's stride on its 3x3 conv), a 3x3/2 max-pool padded by 1,
BatchNorm eps 1e-5 and momentum 0.1.
"""

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
