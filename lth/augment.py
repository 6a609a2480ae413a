"""`--augment`: the standard CIFAR training augmentation, torchvision's RandomCrop(32,
padding=4) and RandomHorizontalFlip(). The draws are made on the CPU from a trial's own
generator, an epoch's at once; a batch is then augmented on the device in one gather.
"""

import torch
from torch.nn import functional

PADDING = 4
DATASETS = ("cifar10", "cifar100")  # the data sets --augment applies to


def draw(count: int) -> torch.Tensor:
    """[count, 3] int64, a row per image: the crop's corner in the padded image (row, column)
    and whether it is flipped, drawn from the process's torch generator."""
    corners = torch.randint(0, 2 * PADDING + 1, (count, 2))
    flips = torch.randint(0, 2, (count, 1))
    return torch.cat([corners, flips], dim=1)


def augmented(pixels: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """`pixels` [N, C, H, W] cropped and flipped as `draws` [N, 3] (rows of `draw`) say."""
    return crop_and_flip(pixels, draws[:, :2], draws[:, 2].bool())


def crop_and_flip(pixels: torch.Tensor, corners: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Each image of `pixels` [N, C, H, W] padded by PADDING zeros, cropped back to H x W from
    its corner in `corners` [N, 2] and mirrored where `flips` [N] is True, in one gather.

    `pixels` are the stored pixels, not normalised: the border is black, as torchvision's.
    """
    n, c, h, w = pixels.shape
    padded = functional.pad(pixels, (PADDING, PADDING, PADDING, PADDING))
    width = w + 2 * PADDING
    device = pixels.device
    rows = corners[:, 0:1] + torch.arange(h, device=device)  # [N, H]
    across = torch.arange(w, device=device)
    cols = corners[:, 1:2] + torch.where(flips[:, None], w - 1 - across, across)  # [N, W]
    where = (rows.view(n, h, 1) * width + cols.view(n, 1, w)).view(n, 1, h * w)
    return padded.flatten(2).gather(2, where.expand(n, c, h * w)).view(n, c, h, w)
