"""YOLOv8n (Ultralytics 2023) in plain torch: the published architecture, module for module.

Scale n of ``yolov8.yaml``: depth 0.33, width 0.25, max channels 1024. Layers and
state_dict layout follow Ultralytics' ``model.model`` (``0`` ... ``22``):

  backbone  Conv(16,3,s2) Conv(32,3,s2) C2f(32,n1,sc) Conv(64,3,s2) C2f(64,n2,sc)
            Conv(128,3,s2) C2f(128,n2,sc) Conv(256,3,s2) C2f(256,n1,sc) SPPF(256,k5)
  neck      Upsample, Concat(P4), C2f(128,n1) | Upsample, Concat(P3), C2f(64,n1)  -> P3/8
            Conv(64,3,s2), Concat, C2f(128,n1) -> P4/16 | Conv(128,3,s2), Concat, C2f(256,n1) -> P5/32
  head      Detect: per level a box branch (Conv3x3, Conv3x3, 1x1 -> 4*16) and a class
            branch (Conv3x3, Conv3x3, 1x1 -> 80); DFL (softmax over 16 bins, fixed 1x1 conv
            with weights 0..15), anchors at cell centres, boxes as (cx, cy, w, h) in pixels.

``Conv`` is Conv2d (no bias) + BatchNorm2d(eps 1e-3) + SiLU. C2f's bottlenecks have a
residual add in the backbone (shortcut) and none in the neck. The output is Ultralytics'
export layout: [N, 4 + 80, anchors] (8400 anchors at 640x640), class scores after sigmoid.

Parameters: 3,157,200 as built (what ``model.info()`` prints), 3,151,904 once every BN is
folded into its conv (``model.fuse()``: "168 layers, 3151904 parameters"); the zoo test
checks the second number after fuser's fold_conv_bn.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import init_cnn_weights

YOLOV8N_PARAMS = 3_157_200
YOLOV8N_FUSED_PARAMS = 3_151_904
REG_MAX = 16
STRIDES = (8, 16, 32)


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU, Ultralytics' ``Conv`` (attributes conv, bn, act)."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 Convs, with ``x +`` when ``shortcut`` (and the widths agree)."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True, e: float = 1.0):
        super().__init__()
        hidden = int(c_out * e)
        self.cv1 = Conv(c_in, hidden, 3, 1)
        self.cv2 = Conv(hidden, c_out, 3, 1)
        self.add = shortcut and c_in == c_out

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with 2 convs: cv1 -> split in two halves -> n bottlenecks on the last
    half, each output kept -> concat of all -> cv2."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False, e: float = 0.5):
        super().__init__()
        self.c = int(c_out * e)
        self.cv1 = Conv(c_in, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, e=1.0) for _ in range(n))

    def forward(self, x):
        halves = self.cv1(x).chunk(2, 1)
        y = [halves[0], halves[1]]  # indexed, not list(): torch.fx cannot iterate a traced value
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max pools, all four maps concatenated."""

    def __init__(self, c_in: int, c_out: int, k: int = 5):
        super().__init__()
        hidden = c_in // 2
        self.cv1 = Conv(c_in, hidden, 1, 1)
        self.cv2 = Conv(hidden * 4, c_out, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss integral: expected bin index of a softmax over ``c1`` bins."""

    def __init__(self, c1: int = REG_MAX):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x):
        b, a = x.shape[0], x.shape[2]  # indexed, not unpacked: torch.fx traces it
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    """The decoupled head: box and class branches per level, decoded to [N, 4 + nc, anchors]."""

    def __init__(self, nc: int, ch: tuple[int, ...]):
        super().__init__()
        self.nc, self.nl, self.no = nc, len(ch), nc + REG_MAX * 4
        c2, c3 = max(16, ch[0] // 4, REG_MAX * 4), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * REG_MAX, 1)) for x in ch
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch
        )
        self.dfl = DFL(REG_MAX)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        n = feats[0].shape[0]
        outs = [torch.cat((self.cv2[i](x), self.cv3[i](x)), 1) for i, x in enumerate(feats)]
        flat = torch.cat([o.view(n, self.no, -1) for o in outs], 2)
        anchors, strides = _anchors(feats)
        parts = flat.split((REG_MAX * 4, self.nc), 1)
        box, cls = parts[0], parts[1]
        distances = self.dfl(box).chunk(2, 1)
        top_left, bottom_right = anchors - distances[0], anchors + distances[1]
        boxes = torch.cat(((top_left + bottom_right) / 2, bottom_right - top_left), 1) * strides
        return torch.cat((boxes, cls.sigmoid()), 1)


def _anchors(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres [1, 2, A] (x, y in cells) and each anchor's stride [1, 1, A]."""
    points, strides = [], []
    for x, stride in zip(feats, STRIDES):
        h, w = x.shape[2], x.shape[3]
        sy, sx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        # from arange, like the points, so the exported graph computes it from shapes alone
        strides.append(torch.arange(h * w).unsqueeze(1).float() * 0 + stride)
    return torch.cat(points).T.unsqueeze(0), torch.cat(strides).T.unsqueeze(0)


class YOLOv8(nn.Module):
    """YOLOv8 detector; ``model`` holds layers 0..22 as in Ultralytics (state_dict ``model.N.*``)."""

    def __init__(self, nc: int = 80, width: float = 0.25, depth: float = 0.33, max_channels: int = 1024):
        super().__init__()

        def ch(c: int) -> int:
            return int(-(-min(c, max_channels) * width // 8) * 8)  # make_divisible(c * width, 8)

        def reps(n: int) -> int:
            return max(round(n * depth), 1)

        c16, c32, c64, c128, c256 = ch(64), ch(128), ch(256), ch(512), ch(1024)
        layers = [
            Conv(3, c16, 3, 2),  # 0  P1/2
            Conv(c16, c32, 3, 2),  # 1  P2/4
            C2f(c32, c32, reps(3), True),  # 2
            Conv(c32, c64, 3, 2),  # 3  P3/8
            C2f(c64, c64, reps(6), True),  # 4
            Conv(c64, c128, 3, 2),  # 5  P4/16
            C2f(c128, c128, reps(6), True),  # 6
            Conv(c128, c256, 3, 2),  # 7  P5/32
            C2f(c256, c256, reps(3), True),  # 8
            SPPF(c256, c256, 5),  # 9
            nn.Upsample(scale_factor=2, mode="nearest"),  # 10
            nn.Identity(),  # 11 concat with 6
            C2f(c256 + c128, c128, reps(3)),  # 12
            nn.Upsample(scale_factor=2, mode="nearest"),  # 13
            nn.Identity(),  # 14 concat with 4
            C2f(c128 + c64, c64, reps(3)),  # 15 P3 out
            Conv(c64, c64, 3, 2),  # 16
            nn.Identity(),  # 17 concat with 12
            C2f(c64 + c128, c128, reps(3)),  # 18 P4 out
            Conv(c128, c128, 3, 2),  # 19
            nn.Identity(),  # 20 concat with 9
            C2f(c128 + c256, c256, reps(3)),  # 21 P5 out
            Detect(nc, (c64, c128, c256)),  # 22
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        m = self.model
        p2 = m[2](m[1](m[0](x)))
        p3 = m[4](m[3](p2))
        p4 = m[6](m[5](p3))
        p5 = m[9](m[8](m[7](p4)))
        h12 = m[12](torch.cat((m[10](p5), p4), 1))
        out3 = m[15](torch.cat((m[13](h12), p3), 1))
        out4 = m[18](torch.cat((m[16](out3), h12), 1))
        out5 = m[21](torch.cat((m[19](out4), p5), 1))
        return m[22]([out3, out4, out5])


def yolov8n(num_classes: int = 80) -> YOLOv8:
    model = YOLOv8(nc=num_classes)
    init_cnn_weights(model)
    with torch.no_grad():  # DFL's bins stay 0..15 whatever the init did
        model.model[22].dfl.conv.weight[:] = torch.arange(REG_MAX, dtype=torch.float).view(1, REG_MAX, 1, 1)
    return model
