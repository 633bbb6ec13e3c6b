"""Small real architectures for the torch tests, with torchvision's exact module structure.

``resnet18`` and ``mobilenet_v2`` follow torchvision's classes line by line (module names,
``nn.ReLU(inplace=True)`` / ``nn.ReLU6(inplace=True)`` modules, BasicBlock's ``relu`` used
twice, ``downsample`` Sequential, ``use_res_connect``, Dropout+Linear classifier) at tiny
widths, so that a 32x32 input runs forward and backward in milliseconds on a CPU.
The ``*_stages`` and ``*_blocks`` functions list a model's modules in call order: the stages
of a ``CheckpointedSequential`` / ``checkpoint_sequential``, or the blocks for
``checkpoint_modules``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """torchvision's 3x3 convolution with padding, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: one in-place ReLU module used twice, ``out += identity``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ResNet over BasicBlocks: stem (conv1, bn1, in-place relu, maxpool), layer1..4, head."""

    def __init__(self, layers=(2, 2, 2, 2), width: int = 4, num_classes: int = 5):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(width: int = 4, num_classes: int = 5, dtype=torch.float64, seed: int = 0) -> ResNet:
    """A ResNet-18 (BasicBlock, [2, 2, 2, 2]) with base width ``width``; BatchNorm affine made non-trivial."""
    torch.manual_seed(seed)
    return _randomize_norms(ResNet((2, 2, 2, 2), width, num_classes)).to(dtype)


def resnet_blocks(model: ResNet) -> list:
    """The 8 BasicBlocks of layer1..layer4, in call order."""
    return [*model.layer1, *model.layer2, *model.layer3, *model.layer4]


def resnet_stages(model: ResNet) -> list:
    """The model's forward as a chain: the stem's modules (the in-place ReLU alone), blocks, head."""
    return [model.conv1, model.bn1, model.relu, model.maxpool, *resnet_blocks(model),
            model.avgpool, nn.Flatten(1), model.fc]


def conv_bn_act(inp: int, oup: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation with ReLU6: Sequential(Conv2d, BatchNorm2d, ReLU6(inplace=True))."""
    padding = (kernel_size - 1) // 2
    return nn.Sequential(nn.Conv2d(inp, oup, kernel_size, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: expand, depthwise, project; ``x + conv(x)`` when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = [conv_bn_act(inp, hidden_dim, kernel_size=1)] if expand_ratio != 1 else []
        layers += [conv_bn_act(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
                   nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


# (expand ratio t, channels c, repeats n, first stride s), torchvision's table shrunk
TINY_SETTING = ((1, 8, 1, 1), (6, 8, 2, 2), (6, 16, 2, 2), (6, 16, 1, 1))


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2: ``features`` Sequential, then pool, flatten, Dropout+Linear classifier."""

    def __init__(self, setting=TINY_SETTING, input_channel: int = 8, last_channel: int = 32,
                 num_classes: int = 5, dropout: float = 0.2):
        super().__init__()
        features = [conv_bn_act(3, input_channel, stride=2)]
        for t, c, n, s in setting:
            for i in range(n):
                features.append(InvertedResidual(input_channel, c, s if i == 0 else 1, expand_ratio=t))
                input_channel = c
        features.append(conv_bn_act(input_channel, last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_channel, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 5, dropout: float = 0.2, dtype=torch.float64, seed: int = 0) -> MobileNetV2:
    """A tiny MobileNetV2 (8 feature stages); BatchNorm affine made non-trivial."""
    torch.manual_seed(seed)
    return _randomize_norms(MobileNetV2(num_classes=num_classes, dropout=dropout)).to(dtype)


def mobilenet_stages(model: MobileNetV2) -> list:
    """``features``' children, then the head as a closure: the classifier is reached, not passed."""
    return [*model.features, lambda x: model.classifier(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))]


def _randomize_norms(model: nn.Module) -> nn.Module:
    """BatchNorm weight/bias away from 1/0, so that a gradient bug cannot hide behind the identity."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return model


def image_batch(batch: int = 2, size: int = 32, dtype=torch.float64, seed: int = 7, requires_grad=True):
    """A random RGB batch (a leaf; ``requires_grad`` as asked)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g, dtype=dtype).requires_grad_(requires_grad)


def mlp_stages(depth: int = 6, width: int = 8, last_width: int = 8, dtype=torch.float64, seed: int = 0) -> list:
    """``depth`` stages of Linear+Tanh, the last a Linear(width, last_width): a chain with no in-place op."""
    torch.manual_seed(seed)
    stages = [nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth - 1)]
    return [s.to(dtype) for s in stages] + [nn.Linear(width, last_width).to(dtype)]
