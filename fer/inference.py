"""Model inputs and outputs outside training: uint8 faces to network inputs, test-time views and
batched logits. Evaluation, visualisation, prediction and the report use these without the
training loop."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fer import NUM_CLASSES


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 48, 48) -> float (B, 1, 48, 48) in [0, 1], channels-last, on `device`."""
    x = images.to(device, non_blocking=True).unsqueeze(1).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last)


def tta_views(x: torch.Tensor, flip: bool, shift: int) -> list[torch.Tensor]:
    """The test-time views of a batch: the image, its 4 copies shifted by `shift` pixels
    (up/down/left/right, border pixels repeated; the "crops" of a model trained with shifts),
    and the mirror of each when `flip`."""
    views = [x]
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
        h, w = x.shape[-2:]
        for dy, dx in ((-shift, 0), (shift, 0), (0, -shift), (0, shift)):
            views.append(padded[..., shift + dy:shift + dy + h, shift + dx:shift + dx + w])
    if flip:
        views += [torch.flip(v, dims=[3]) for v in views]
    return views


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray | torch.Tensor, device: torch.device,
                   batch_size: int = 128, flip_tta: bool = False, shift_tta: int = 0) -> torch.Tensor:
    """Logits for uint8 images (N, 48, 48), in eval mode; with test-time augmentation
    (`flip_tta`, `shift_tta` > 0) the logits of all the views of `tta_views` are averaged."""
    model.eval()
    images = torch.as_tensor(images)
    outputs = []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start:start + batch_size], device)
        views = tta_views(x, flip_tta, shift_tta)
        logits = torch.stack([model(v.contiguous(memory_format=torch.channels_last)) for v in views]).mean(0)
        outputs.append(logits.float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0, NUM_CLASSES)
