"""The paper's colour augmentation: PCA lighting on the RGB covariance of the training
set, and the running statistics (mean, covariance) it is computed from."""

from __future__ import annotations

import torch


def pca_lighting(
    x01: torch.Tensor,
    eigval: torch.Tensor,
    eigvec: torch.Tensor,
    std: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The paper's colour augmentation on a float batch (N, 3, H, W) in [0, 1] RGB.

    To every pixel of image n add sum_i alpha_{n,i} * lambda_i * p_i, with p_i, lambda_i
    the eigenvectors (columns of `eigvec`) and eigenvalues of the training set's 3x3 RGB
    covariance and alpha_{n,i} ~ N(0, std), drawn once per image. Everything is on the
    [0, 1] scale; callers on the 0..255 scale multiply the shift by 255.
    """
    n = x01.shape[0]
    alpha = torch.randn(n, 3, generator=generator).to(x01.device) * std
    shift = (alpha * eigval.to(x01.device)) @ eigvec.to(x01.device).T  # (n, 3)
    return x01 + shift.view(n, 3, 1, 1).to(x01.dtype)


class RunningRGBStats:
    """Per-channel mean and 3x3 RGB covariance over many uint8 images, on [0, 1]."""

    def __init__(self) -> None:
        self.n = 0
        self.sum = torch.zeros(3, dtype=torch.float64)
        self.outer = torch.zeros(3, 3, dtype=torch.float64)

    def update(self, u8: torch.Tensor) -> None:
        px = u8.reshape(-1, 3, u8.shape[-2] * u8.shape[-1]).permute(1, 0, 2).reshape(3, -1)
        px = px.double() / 255.0
        self.n += px.shape[1]
        self.sum += px.sum(1)
        self.outer += px @ px.T

    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    def covariance(self) -> torch.Tensor:
        m = self.mean()
        return self.outer / self.n - torch.outer(m, m)

    def eig(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (descending) and eigenvectors as columns."""
        val, vec = torch.linalg.eigh(self.covariance())
        order = val.argsort(descending=True)
        return val[order].float(), vec[:, order].float()

    def all_reduce(self, device="cpu") -> None:
        """Add up every DDP process's sums (torch.distributed must be initialised)."""
        import torch.distributed as dist

        t = torch.cat(
            [torch.tensor([float(self.n)], dtype=torch.float64), self.sum, self.outer.flatten()]
        )
        t = t.to(device)
        dist.all_reduce(t)
        t = t.cpu()
        self.n, self.sum, self.outer = int(t[0]), t[1:4].clone(), t[4:].reshape(3, 3).clone()
