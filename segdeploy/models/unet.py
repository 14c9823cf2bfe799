"""U-Net (Ronneberger et al. 2015), trained from scratch.

This is the tutorial's DoubleConv / Down / Up structure with its channel arithmetic fixed: with
bilinear upsampling the tutorial's ``up1`` expected 2048 input channels but received 1536. As in
milesial/Pytorch-UNet, the bottleneck is halved (``factor = 2``) when upsampling bilinearly, so the
upsampled tensor and the skip connection always add up to what the next DoubleConv expects.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segdeploy.models.registry import register_model


class DoubleConv(nn.Sequential):
    """(conv 3x3 -> BN -> ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        mid_channels = mid_channels or out_channels
        super().__init__(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """Halve the resolution (max-pool), then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """Double the resolution, concatenate the skip connection, then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = True):
        super().__init__()
        if bilinear:
            # Upsampling keeps the channel count; the conv halves it after the concat.
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        # After pooling an odd size, the upsampled map is one pixel short of the skip: pad it so
        # eager mode runs at any size. At multiples of 16 (what the export allows) both pads are 0.
        dy = skip.size(2) - x.size(2)
        dx = skip.size(3) - x.size(3)
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net with four down and four up stages.

    Args:
        num_classes: number of output classes (logit channels).
        in_channels: input image channels.
        features: channels of the four encoder stages; the bottleneck has ``2 * features[-1]``
            channels (halved when ``bilinear``).
        bilinear: bilinear upsampling (default) or transposed convolutions.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        features: Sequence[int] = (64, 128, 256, 512),
        bilinear: bool = True,
    ):
        super().__init__()
        if len(features) != 4:
            raise ValueError(f"features needs 4 stage widths, got {list(features)}")
        f1, f2, f3, f4 = features
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(in_channels, f1)
        self.down1 = Down(f1, f2)
        self.down2 = Down(f2, f3)
        self.down3 = Down(f3, f4)
        self.down4 = Down(f4, 2 * f4 // factor)
        self.up1 = Up(2 * f4, f4 // factor, bilinear)
        self.up2 = Up(f4, f3 // factor, bilinear)
        self.up3 = Up(f3, f2 // factor, bilinear)
        self.up4 = Up(f2, f1, bilinear)
        self.outc = nn.Conv2d(f1, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)  # (B, f1, H, W)
        x2 = self.down1(x1)  # (B, f2, H/2, W/2)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)  # (B, 2*f4/factor, H/16, W/16)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)  # (B, num_classes, H, W)


@register_model(
    task="segmentation",
    variants={
        "tiny": {"features": [8, 16, 32, 64]},
        "small": {"features": [16, 32, 64, 128]},
        "full": {"features": [64, 128, 256, 512]},
    },
    default_variant="small",  # trains on CPU in minutes
    train_size=128,
    description="U-Net from scratch (bilinear upsampling, configurable widths)",
)
def build_unet(num_classes: int, **kwargs) -> UNet:
    """:class:`UNet` with ``num_classes`` outputs; ``kwargs`` as :class:`UNet` takes them."""
    if "features" in kwargs:
        kwargs["features"] = tuple(kwargs["features"])
    return UNet(num_classes=num_classes, **kwargs)
