"""The model zoo: our own definitions of common small networks, sized from the data.

Every model is built from standard modules only (``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.ReLU``,
``nn.MaxPool2d``, ``nn.AdaptiveAvgPool2d``, ``nn.Linear``; the GPTs also ``nn.Embedding``,
``nn.LayerNorm``, ``nn.GELU``) and gives each activation its own module, so
each module call becomes one ONNX node: the trainer's noise sites then map one to one onto the
nodes ``transform`` touches in the exported model.

The convolutional models are the CIFAR-style variants (3x3 stem, no stem pooling). They also
work on smaller images (8x8 digits): a stage downsamples only while the feature map is at
least 2 pixels wide, so no feature map shrinks to nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from analog_onnx.data.dataset import MAX_CLASSES
from analog_onnx.errors import AnalogError

Shape = tuple[int, ...]


def _stride(size: int) -> int:
    """Downsample by 2 only while the feature map can still be halved."""
    return 2 if size >= 2 else 1


def _shrink(size: int, stride: int) -> int:
    return (size + stride - 1) // stride


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


class MLP(nn.Sequential):
    """Flatten, then fully connected layers with ReLU; works on any input shape."""

    def __init__(self, in_shape: Shape, num_classes: int, hidden: Sequence[int] = (256, 256)) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = _numel(in_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class LeNet5(nn.Module):
    """LeNet-5 layout (conv 6, conv 16, fc 120, fc 84) with ReLU and max pooling.

    The second convolution is unpadded as in the original when the map is large enough
    (28x28 MNIST gives the classic 16x5x5 features) and padded on small images (8x8 digits).
    """

    def __init__(self, in_shape: Shape, num_classes: int) -> None:
        super().__init__()
        channels, height, _ = _image_shape("lenet5", in_shape)
        size = _shrink(height, _stride(height))
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(_stride(height)),
            nn.Conv2d(6, 16, 5, padding=0 if size >= 10 else 2), nn.ReLU(),
            nn.MaxPool2d(_stride(size - 4 if size >= 10 else size)),
        )
        self.flatten = nn.Flatten()
        features = _feature_count(self.features, in_shape)
        self.classifier = nn.Sequential(
            nn.Linear(features, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN shortcut where the shape changes (option B)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout, 3, stride)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = _conv_bn(cout, cout, 3)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, stages of basic blocks, global average pooling, one linear."""

    def __init__(self, in_shape: Shape, num_classes: int, widths: Sequence[int], blocks: Sequence[int],
                 arch: str) -> None:
        super().__init__()
        channels, height, _ = _image_shape(arch, in_shape)
        self.stem = nn.Sequential(*_conv_bn(channels, widths[0], 3), nn.ReLU())
        stages: list[nn.Module] = []
        cin, size = widths[0], height
        for index, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if index == 0 else _stride(size)
            size = _shrink(size, stride)
            stage = [BasicBlock(cin, width, stride)] + [BasicBlock(width, width, 1) for _ in range(count - 1)]
            stages.append(nn.Sequential(*stage))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """CIFAR-style VGG: 3x3 convs (optionally with BatchNorm), max pooling, one linear classifier."""

    def __init__(self, in_shape: Shape, num_classes: int, layout: Sequence[int | str], batch_norm: bool,
                 arch: str) -> None:
        super().__init__()
        cin, size, _ = _image_shape(arch, in_shape)
        layers: list[nn.Module] = []
        for item in layout:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            cout = int(item)
            layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU())
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6()]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6()]
        layers += _conv_bn(hidden, cout, 1)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


# (expansion, channels, blocks, stride); CIFAR variant: stride 1 in the second stage and the stem
MOBILENETV2_LAYOUT = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                      (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """CIFAR-style MobileNetV2 (width 1.0): stride-1 stem, ReLU6, 1280-wide head."""

    def __init__(self, in_shape: Shape, num_classes: int) -> None:
        super().__init__()
        channels, size, _ = _image_shape("mobilenetv2", in_shape)
        layers: list[nn.Module] = [*_conv_bn(channels, 32, 3), nn.ReLU6()]
        cin = 32
        for expand, cout, count, stride in MOBILENETV2_LAYOUT:
            for index in range(count):
                s = min(stride, _stride(size)) if index == 0 else 1
                size = _shrink(size, s)
                layers.append(InvertedResidual(cin, cout, s, expand))
                cin = cout
        layers += [*_conv_bn(cin, 1280, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: the projections are ``nn.Linear`` (analog layers), the
    two activation-by-activation products stay digital."""

    def __init__(self, width: int, heads: int, context: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.register_buffer("causal", torch.tril(torch.ones(context, context, dtype=torch.bool)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, width = x.shape
        q, k, v = (part.reshape(n, t, self.heads, -1).transpose(1, 2) for part in self.qkv(x).split(width, dim=2))
        scores = (q @ k.transpose(2, 3)) * (1.0 / math.sqrt(q.shape[-1]))
        scores = scores.masked_fill(~self.causal[:t, :t], float("-inf"))
        y = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(n, t, width)
        return self.proj(y)


class Block(nn.Module):
    """Pre-norm transformer block: attention and a GELU MLP, each with a residual connection."""

    def __init__(self, width: int, heads: int, context: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, context)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.gelu(self.fc1(self.norm2(x))))


class GPT(nn.Module):
    """A small GPT-2-style decoder for next-token prediction on token ids [N, T] (T <= the
    context it was built for): learned positions, pre-norm blocks, and an output layer tied to
    the token embedding, as GPT-2 and Llama-3.2-1B tie theirs."""

    def __init__(self, in_shape: Shape, vocabulary: int, width: int, layers: int, heads: int, arch: str) -> None:
        super().__init__()
        if len(in_shape) != 1 or in_shape[0] < 1:
            raise AnalogError(f"arch {arch} needs token windows (T,), got samples of shape {in_shape}")
        self.context = in_shape[0]
        self.wte = nn.Embedding(vocabulary, width)
        self.wpe = nn.Embedding(self.context, width)
        self.blocks = nn.Sequential(*[Block(width, heads, self.context) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocabulary, bias=False)
        self.lm_head.weight = self.wte.weight
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.lm_head(self.norm(self.blocks(self.wte(ids) + self.wpe(positions))))


TOKEN_ARCHS = ("gpt-micro", "gpt-mini")  # models that read token ids, not float samples

BUILDERS: dict[str, Callable[[Shape, int], nn.Module]] = {
    "mlp": MLP,
    "lenet5": LeNet5,
    "resnet20": lambda s, n: CifarResNet(s, n, (16, 32, 64), (3, 3, 3), "resnet20"),
    "resnet18": lambda s, n: CifarResNet(s, n, (64, 128, 256, 512), (2, 2, 2, 2), "resnet18"),
    "vgg11": lambda s, n: VGG(s, n, VGG11_LAYOUT, False, "vgg11"),
    "vgg11_bn": lambda s, n: VGG(s, n, VGG11_LAYOUT, True, "vgg11_bn"),
    "mobilenetv2": MobileNetV2,
    "gpt-micro": lambda s, n: GPT(s, n, 32, 1, 2, "gpt-micro"),
    "gpt-mini": lambda s, n: GPT(s, n, 128, 4, 4, "gpt-mini"),
    # MLPs of 1 to 6 hidden layers of width 256: depth as the only variable on one data set
    **{f"mlp{k}": (lambda s, n, k=k: MLP(s, n, (256,) * k)) for k in range(1, 7)},
}
ARCHS = tuple(BUILDERS)


def build_model(arch: str, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialized zoo model for inputs of shape ``in_shape`` (no batch axis)."""
    if arch not in BUILDERS:
        raise AnalogError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    if num_classes < 2:
        raise AnalogError(f"need at least 2 classes, got {num_classes}")
    if num_classes > MAX_CLASSES:  # the data readers' bound, for models built from other sources
        what = "a vocabulary of" if arch in TOKEN_ARCHS else "the largest label + 1:"
        raise AnalogError(f"{arch} takes at most {MAX_CLASSES:,} outputs, got {what} {num_classes:,}")
    return BUILDERS[arch](tuple(int(d) for d in in_shape), num_classes)


def _numel(shape: Shape) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def _image_shape(arch: str, in_shape: Shape) -> Shape:
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise AnalogError(f"arch {arch} needs image inputs (C, H, W), got {in_shape}; use mlp for vectors")
    return in_shape


def _feature_count(features: nn.Module, in_shape: Shape) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *in_shape)).numel())
