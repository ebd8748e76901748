"""The optional adversarial term of translation (``train.gan_weight``): a small conditional PatchGAN, shared by the
domains as the reference's discriminator is (its convolutions and its InstanceNorm serve every domain).

For each domain branch m the discriminator sees the branch's input ``x_m`` concatenated with an image (the target,
or the branch's prediction) and gives one logit per patch. With ``gan_weight = w > 0`` a training step is:

1. the generator's loss: the data loss plus ``w * mean_m BCE(D(x_m, pred_m), real)``, back-propagated;
2. the gradients that loss left on the discriminator are dropped, and the discriminator's loss
   ``mean_m (BCE(D(x_m, target), real) + BCE(D(x_m, pred_m.detach()), fake)) / 2`` is back-propagated into it
   alone (the predictions are detached);
3. one optimizer step updates both (the discriminator's parameters are in the run's optimizer, its weights in the
   model's checkpoints as ``discriminator.*``, so a resumed run continues exactly).

The ensemble is not judged: it is a detached mixture of the branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchDiscriminator", "attach_discriminator", "adversarial_backward"]


class PatchDiscriminator(nn.Module):
    """conv 4x4 s2 -> LeakyReLU -> conv 4x4 s2 -> InstanceNorm -> LeakyReLU -> conv 3x3 -> patch logits."""

    def __init__(self, in_channels: int, image_channels: int = 3, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + image_channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.InstanceNorm2d(2 * width, affine=True),
            nn.LeakyReLU(0.2), nn.Conv2d(2 * width, 1, 3, 1, 1))

    def forward(self, cond: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``cond`` ``[N, C_in, H, W]``, ``image`` ``[N, 3, H, W]`` -> logits ``[N, 1, H/4, W/4]``."""
        return self.net(torch.cat([cond, image], 1))


def attach_discriminator(model: nn.Module, in_channels: int, gan_weight: float) -> nn.Module:
    """Give ``model`` its ``discriminator`` when ``gan_weight > 0`` (drawn from torch's RNG after the model, so a
    run without the term draws exactly what it did before); returns ``model``."""
    if gan_weight > 0:
        model.discriminator = PatchDiscriminator(in_channels)
    return model


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if real else 0.0))


def adversarial_backward(model: nn.Module, x: torch.Tensor, outs: dict, targets: dict[str, torch.Tensor],
                         data_loss: torch.Tensor, gan_weight: float) -> dict[str, torch.Tensor]:
    """Steps 1 and 2 of the module docstring for the image tasks of ``outs`` (``CENNet.forward_tasks`` of
    ``x`` ``[M, N, C_in, H, W]``); returns the generator's adversarial loss and the discriminator's loss (detached
    tensors), for the logs."""
    disc = model.discriminator
    images = [(task, out) for task, out in outs.items() if task == "shade"]
    conds = list(x)  # branch m of an image task reads modality m (early fusion: the one concatenated stream)
    adv = torch.stack([_bce(disc(c, p), True) for _, out in images for c, p in zip(conds, out.logits)]).mean()
    (data_loss + gan_weight * adv).backward()
    for p in disc.parameters():  # the generator's loss must not train the discriminator
        p.grad = None
    d_losses = []
    for task, out in images:
        real = targets[task]
        for c, p in zip(conds, out.logits):
            d_losses.append(0.5 * (_bce(disc(c, real), True) + _bce(disc(c, p.detach()), False)))
    d_loss = torch.stack(d_losses).mean()
    d_loss.backward()
    return {"loss/adversarial": adv.detach(), "loss/discriminator": d_loss.detach()}
