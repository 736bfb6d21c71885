"""The registered architectures: small CNNs and a CIFAR ResNet-8 for CPU work, ResNet-18 (CIFAR stem),
VGG-16-BN, ViTs."""

from __future__ import annotations

from torch import nn

from mcu_dist.registry import Registry

MODELS: Registry = Registry("model.name")


def _conv_block(cin: int, cout: int, norm: bool) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=not norm),
        *([nn.BatchNorm2d(cout)] if norm else []),
        nn.ReLU(inplace=True),
    ]


class PooledClassifier(nn.Module):
    """``features``, global average pooling, a linear ``head``: the shape both CPU-sized conv nets share."""

    def _set_layers(self, layers: list[nn.Module], channels: int, num_classes: int) -> None:
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


class SmallCNN(PooledClassifier):
    """Three conv blocks (16-32-64 channels, each then 2x2 pooling while the map allows), a linear head."""

    def __init__(
        self, num_classes: int, in_channels: int, image_size: int, norm: bool = True, width: int = 16
    ):
        super().__init__()
        layers: list[nn.Module] = []
        size, cin = image_size, in_channels
        for i in range(3):
            cout = width * 2**i
            layers += _conv_block(cin, cout, norm)
            if size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            cin = cout
        self._set_layers(layers, cin, num_classes)


@MODELS.register("small_cnn")
def small_cnn(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return SmallCNN(num_classes, in_channels, image_size, norm=True)


@MODELS.register("small_cnn_nobn")
def small_cnn_nobn(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """The small CNN without BatchNorm: data-parallel runs match single-worker runs exactly."""
    return SmallCNN(num_classes, in_channels, image_size, norm=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and the identity (or a 1x1 conv-BN when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        return (self.body(x) + self.shortcut(x)).relu()


class CifarResNet(PooledClassifier):
    """He et al. (2016)'s CIFAR ResNet-(6n+2): a 3x3 stem, three stages of n basic blocks (width w, 2w, 4w;
    stride 2 into stages 2 and 3), global pooling, a linear head."""

    def __init__(self, num_classes: int, in_channels: int, blocks: int = 1, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        cin = width
        for stage in range(3):
            cout = width * 2**stage
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self._set_layers(layers, cin, num_classes)


@MODELS.register("resnet8")
def resnet8(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """CIFAR ResNet-8 (78k parameters in 29 tensors, the largest 47% of them): the CPU model on which a mask
    has many tensors to choose from (the small CNN's largest tensor holds 76% of its parameters). Where the
    shape changes the shortcut is a 1x1 conv + BN (He et al.'s option B), not the zero-padded identity."""
    return CifarResNet(num_classes, in_channels, blocks=1, width=16)


@MODELS.register("resnet18")
def resnet18(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """torchvision's ResNet-18; below 64 px the CIFAR stem (3x3 conv, stride 1, no max-pool)."""
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(num_classes=num_classes)
    if image_size < 64:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


@MODELS.register("vgg16_bn")
def vgg16_bn(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """torchvision's VGG-16-BN; a single linear classifier on pooled features below 224 px."""
    from torchvision.models import vgg16_bn as tv_vgg16_bn

    model = tv_vgg16_bn(num_classes=num_classes)
    if in_channels != 3:
        model.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
    if image_size < 224:
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Linear(512, num_classes)
    return model


def _vit(
    num_classes: int,
    in_channels: int,
    image_size: int,
    patch: int,
    layers: int,
    heads: int,
    dim: int,
    mlp: int,
) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        image_size=image_size,
        patch_size=patch,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=dim,
        mlp_dim=mlp,
        num_classes=num_classes,
    )
    if in_channels != 3:
        model.conv_proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
    return model


@MODELS.register("vit_small")
def vit_small(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """A small ViT for 32 px images: 4 px patches, 6 layers, 6 heads, width 192."""
    return _vit(
        num_classes,
        in_channels,
        image_size,
        patch=4 if image_size % 4 == 0 else 1,
        layers=6,
        heads=6,
        dim=192,
        mlp=768,
    )


@MODELS.register("vit_b16")
def vit_b16(num_classes: int, in_channels: int = 3, image_size: int = 224) -> nn.Module:
    """ViT-B/16 (torchvision's layout) for 224 px images."""
    return _vit(num_classes, in_channels, image_size, patch=16, layers=12, heads=12, dim=768, mlp=3072)
