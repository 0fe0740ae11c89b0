"""Reference models used in the sparse-training literature, written from scratch.

Every model is built through :func:`build_model` (or directly through the :data:`MODELS`
registry) with the input channel count, class count and image side length of the
dataset, so the same name works on Fashion-MNIST (1x28x28), CIFAR (3x32x32) or the
8x8 ``digits`` set where the architecture allows it.

Available names:

* ``mlp`` / ``lenet300-100`` -- flatten, 300, 100, classes with ReLU
  (266,610 parameters on 28x28x1 / 10 classes).
* ``lenet5`` -- classic LeNet-5: conv6 5x5 pad 2, max-pool, conv16 5x5, max-pool,
  fc120, fc84, fc (ReLU activations).
* ``lenet5-caffe`` -- Caffe's LeNet: conv20 5x5, max-pool, conv50 5x5, max-pool,
  fc500, ReLU, fc (431,080 parameters, 430,500 of them weights, on 28x28x1 / 10 classes).
* ``vgg11``, ``vgg16``, ``vgg19`` -- CIFAR-style VGG with BatchNorm, an adaptive average
  pool and a single linear classifier.
* ``resnet20``, ``resnet32``, ``resnet56`` -- CIFAR ResNets (He et al. 2016, section 4.2)
  with BasicBlocks of 16/32/64 channels and 1x1-conv+BN projection shortcuts.
* ``resnet18``, ``resnet34``, ``resnet50`` -- ImageNet ResNets adapted to small images:
  3x3 stride-1 stem convolution and no max-pool.
* ``wrn-22-2`` -- pre-activation Wide ResNet, depth 22, width factor 2, dropout 0.
* ``gpt-mini``, ``gpt-micro`` -- GPT-style decoders (:mod:`sparsetrain.experiments.gpt`) for the
  byte-level text datasets: ``num_classes`` is the vocabulary (256) and the context length is the
  model's own (:func:`model_context`); ``in_channels``/``image_size`` are ignored.

Convolutions use Kaiming-normal initialisation (``fan_out``, ReLU gain) with zero biases;
BatchNorm starts at weight 1 / bias 0 and linear layers keep PyTorch's defaults, so a
model is fully determined by ``torch.manual_seed`` before :func:`build_model`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .gpt import GPT, GPT_CONFIGS

__all__ = [
    "model_context",
    "MODELS",
    "build_model",
    "model_names",
    "MLP",
    "LeNet5",
    "LeNet5Caffe",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "PreActBlock",
    "WideResNet",
    "init_weights",
]


def init_weights(model: nn.Module) -> nn.Module:
    """Initialise ``model`` in place: Kaiming-normal convolutions, unit BatchNorm.

    Convolution weights get ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` and
    zero biases; BatchNorm layers get weight 1 and bias 0; other layers (``nn.Linear``)
    keep PyTorch's default initialisation. Returns ``model`` for chaining.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def _check_positive(name: str, **values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name}: {key} must be a positive int, got {value!r}")


# --------------------------------------------------------------------------- MLP / LeNets


class MLP(nn.Module):
    """Fully connected network: flatten, hidden layers with ReLU, linear classifier.

    With the default ``hidden=(300, 100)`` this is LeNet-300-100.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (300, 100)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape ``(N, num_classes)``."""
        return self.net(x)


class LeNet5(nn.Module):
    """Classic LeNet-5 (ReLU, max-pool): conv6 5x5 pad 2, pool, conv16 5x5, pool, 120, 84, fc."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 28):
        super().__init__()
        side = (image_size // 2 - 4) // 2
        if side < 1:
            raise InputError(f"lenet5 needs image_size >= 10, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape ``(N, num_classes)``."""
        return self.classifier(self.features(x))


class LeNet5Caffe(nn.Module):
    """Caffe's LeNet-5 variant: conv20 5x5, pool, conv50 5x5, pool, fc500, ReLU, fc.

    As in Caffe's ``lenet_train_test.prototxt`` there is no nonlinearity after the
    convolutions. The flattened size is ``50 * s * s`` with ``s = ((image_size-4)//2-4)//2``
    (800 for 28x28 inputs).
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 28):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise InputError(f"lenet5-caffe needs image_size >= 16, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(50 * side * side, 500),
            nn.ReLU(inplace=True),
            nn.Linear(500, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape ``(N, num_classes)``."""
        return self.classifier(self.features(x))


# --------------------------------------------------------------------------- VGG

_VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """CIFAR-style VGG: 3x3 conv + BatchNorm + ReLU stages, adaptive avg-pool, one linear layer.

    ``cfg`` lists output channels, with ``"M"`` for a 2x2 max-pool. Pools use
    ``ceil_mode=True`` so inputs smaller than 32x32 (28x28, 8x8) never shrink to zero;
    for 32x32 inputs this is identical to the usual floor-mode pooling.
    """

    def __init__(self, cfg: Sequence[int | str], in_channels: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                width = int(item)
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape ``(N, num_classes)``."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# --------------------------------------------------------------------------- ResNets


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, identity or 1x1-conv+BN projection shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        out_planes = planes * self.expansion
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1, 3x3, 1x1 with 4x expansion) with projection shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for small images: 3x3 stride-1 stem, stages of residual blocks, avg-pool, fc.

    ``num_blocks[i]`` blocks of width ``widths[i]`` per stage; every stage after the
    first starts with stride 2. ``ResNet(BasicBlock, [3, 3, 3], [16, 32, 64], ...)`` is
    ResNet-20; ``ResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], ...)`` is the
    CIFAR ResNet-18.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        widths: Sequence[int],
        in_channels: int,
        num_classes: int,
    ):
        super().__init__()
        if len(num_blocks) != len(widths) or not num_blocks:
            raise InputError("num_blocks and widths must be non-empty and of equal length")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages: list[nn.Module] = []
        for i, (n, width) in enumerate(zip(num_blocks, widths)):
            blocks: list[nn.Module] = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, width, stride))
                in_planes = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape ``(N, num_classes)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.fc(torch.flatten(self.pool(out), 1))


class PreActBlock(nn.Module):
    """Pre-activation wide-ResNet block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3.

    When the shape changes, the shortcut is a 1x1 convolution applied to the
    pre-activated input (as in Zagoruyko & Komodakis' reference code).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = float(dropout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        identity = x if self.shortcut is None else self.shortcut(pre)
        return out + identity


class WideResNet(nn.Module):
    """Pre-activation Wide ResNet WRN-``depth``-``width`` (Zagoruyko & Komodakis 2016).

    ``depth`` must satisfy ``(depth - 4) % 6 == 0``; stages have 16k, 32k and 64k
    channels with ``(depth - 4) / 6`` blocks each.
    """

    def __init__(
        self,
        depth: int,
        width: int,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise InputError(f"WideResNet depth must be 6n+4 (n >= 1), got {depth}")
        n = (depth - 4) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        in_planes = 16
        stages: list[nn.Module] = []
        for i, w in enumerate(widths):
            blocks: list[nn.Module] = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(PreActBlock(in_planes, w, stride, dropout))
                in_planes = w
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape ``(N, num_classes)``."""
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out))
        return self.fc(torch.flatten(self.pool(out), 1))


# --------------------------------------------------------------------------- registry


def _mlp(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return MLP(in_channels * image_size * image_size, num_classes, (300, 100))


def _lenet5(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return LeNet5(in_channels, num_classes, image_size)


def _lenet5_caffe(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return LeNet5Caffe(in_channels, num_classes, image_size)


def _vgg(name: str) -> Callable[[int, int, int], nn.Module]:
    def factory(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return VGG(_VGG_CFGS[name], in_channels, num_classes)

    factory.__name__ = name
    factory.__doc__ = f"Build CIFAR-style {name.upper()} with BatchNorm."
    return factory


def _resnet(
    block: type[BasicBlock] | type[Bottleneck], num_blocks: Sequence[int], widths: Sequence[int]
) -> Callable[[int, int, int], nn.Module]:
    def factory(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return ResNet(block, num_blocks, widths, in_channels, num_classes)

    return factory


def _wrn(depth: int, width: int) -> Callable[[int, int, int], nn.Module]:
    def factory(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return WideResNet(depth, width, in_channels, num_classes, dropout=0.0)

    return factory


def _gpt(name: str) -> Callable[[int, int, int], nn.Module]:
    def factory(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return GPT(dataclasses.replace(GPT_CONFIGS[name], vocab=num_classes))

    factory.__doc__ = f"Build the GPT-style decoder {name} ({GPT_CONFIGS[name]})."
    return factory


_CIFAR = (16, 32, 64)
_IMAGENET = (64, 128, 256, 512)

#: Model registry: name -> factory ``(in_channels, num_classes, image_size) -> nn.Module``.
#: The factories return modules with PyTorch's default initialisation; use
#: :func:`build_model`, which also applies :func:`init_weights`.
MODELS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "mlp": _mlp,
    "lenet300-100": _mlp,
    "lenet5": _lenet5,
    "lenet5-caffe": _lenet5_caffe,
    "vgg11": _vgg("vgg11"),
    "vgg16": _vgg("vgg16"),
    "vgg19": _vgg("vgg19"),
    "resnet20": _resnet(BasicBlock, (3, 3, 3), _CIFAR),
    "resnet32": _resnet(BasicBlock, (5, 5, 5), _CIFAR),
    "resnet56": _resnet(BasicBlock, (9, 9, 9), _CIFAR),
    "resnet18": _resnet(BasicBlock, (2, 2, 2, 2), _IMAGENET),
    "resnet34": _resnet(BasicBlock, (3, 4, 6, 3), _IMAGENET),
    "resnet50": _resnet(Bottleneck, (3, 4, 6, 3), _IMAGENET),
    "wrn-22-2": _wrn(22, 2),
    **{name: _gpt(name) for name in GPT_CONFIGS},
}


def model_context(name: str) -> int | None:
    """The context length of a language model (its inputs are token sequences), else ``None``."""
    cfg = GPT_CONFIGS.get(_normalize_name(name)) if isinstance(name, str) else None
    return cfg.context if cfg is not None else None


def model_names() -> list[str]:
    """Return the registered model names, in registry order."""
    return list(MODELS)


def _normalize_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    aliases = {"lenet-300-100": "lenet300-100", "lenet300100": "lenet300-100",
               "lenet5caffe": "lenet5-caffe", "lenet-5-caffe": "lenet5-caffe",
               "lenet-5": "lenet5", "wrn22-2": "wrn-22-2", "wrn-22x2": "wrn-22-2"}
    return aliases.get(key, key)


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build a freshly initialised model from the registry.

    Args:
        name: a key of :data:`MODELS` (case-insensitive; ``_`` is accepted for ``-``).
        in_channels: input image channels (1 for (Fashion-)MNIST, 3 for CIFAR).
        num_classes: number of output logits.
        image_size: side length of the (square) input images; used by the fully
            connected models to size their first linear layer.

    Returns:
        The model, with convolutions Kaiming-initialised (see :func:`init_weights`).
        Its parameters are on the CPU; the result is a deterministic function of the
        global torch RNG state.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones) or an
            image size too small for the architecture.
    """
    if not isinstance(name, str):
        raise InputError(f"model name must be a string, got {name!r}")
    key = _normalize_name(name)
    if key not in MODELS:
        raise InputError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    if key in GPT_CONFIGS:  # a language model: num_classes is the vocabulary, the rest is not used
        _check_positive(key, num_classes=num_classes)
    else:
        _check_positive(key, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    model = MODELS[key](in_channels, num_classes, image_size)
    return init_weights(model)
