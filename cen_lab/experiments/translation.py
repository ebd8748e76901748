"""The translation scenario: predicting the ``shade`` rendering from rgb (albedo) and depth (shape) with the CEN
U-Net (``model.arch = "unet"``), and the image distance the paper reports beside L1, PSNR and SSIM.

The paper's FID and KID compare Inception-v3 features of generated and real images. Those weights cannot be
downloaded here, so cen_lab reports no FID or KID of its own; ``kid_distance`` computes the KID statistic (an
unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets; torchmetrics' implementation) on the
features of any network the user supplies, such as an Inception they have on disk.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["kid_distance"]


def kid_distance(extractor: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, subset_size: int = 50,
                 subsets: int = 100) -> tuple[float, float]:
    """KID-style distance between two image sets, on ``extractor``'s features.

    Parameters
    ----------
    extractor : torch.nn.Module
        Maps images ``[N, C, H, W]`` in [0, 1] to features ``[N, D]``. It is run in eval mode without gradients.
    real, fake : torch.Tensor
        Images ``[N, C, H, W]`` in [0, 1] (the counts may differ).
    subset_size : int
        Images per random subset; each set needs at least this many.
    subsets : int
        Number of random subsets the MMD is averaged over.

    Returns
    -------
    (mean, std) : tuple of float
        KID's mean over subsets and its standard deviation (torchmetrics' convention). Not comparable with the
        paper's KID unless ``extractor`` is the same Inception network.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    smallest = min(len(real), len(fake))
    if subset_size > smallest:
        raise ValueError(f"subset_size={subset_size} is larger than the smaller image set ({smallest} images)")
    extractor = extractor.eval()
    with warnings.catch_warnings():  # torchmetrics warns that features are kept in memory: that is the point here
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=extractor, subsets=subsets, subset_size=subset_size, normalize=True)
        with torch.no_grad():
            metric.update(real.float(), real=True)
            metric.update(fake.float(), real=False)
            mean, std = metric.compute()
    return float(mean), float(std)
