"""The deep autoencoder that turns fc7 into short binary codes (the paper's section 7).

The paper suggests compressing the 4096-d vectors with a deep autoencoder into short
binary codes, after Krizhevsky & Hinton, "Using very deep autoencoders for
content-based image retrieval" (ESANN 2011). Here: fc7 is centred and projected on its
first 512 principal components (a fixed linear first layer; it makes training on the
CPU ~8x cheaper and keeps nearly all of fc7's variance), then an encoder
512 -> 512 -> 512 -> bits with logistic code units, and the mirrored decoder. During
training Gaussian noise is added to the input of the code units (ramped up over the
first half of training, as in K&H 2011): to carry information through the noise the
logistic units must saturate, so the codes become binary. A code bit is then
`logistic > 0.5`, packed 8 to a byte. The mean, the projection and the input scale are
saved with the weights. At most MAX_TRAIN vectors (a fixed random sample) are trained on;
every vector is encoded.

The reconstruction error reported per epoch is the fraction of fc7's variance that the
*binary* codes fail to reconstruct (1.0 = no better than the mean), on a fixed sample.

Imports torch (inside its functions, so the module itself is light).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import CodesError
from ..progress import Progress

FORMAT = "alexsearch-autoencoder"
PCA_DIM = 512
HIDDEN = (512, 512)
DEFAULT_BITS = 256
DEFAULT_EPOCHS = 50
NOISE = 4.0  # std of the noise before the code units once fully ramped up
MAX_TRAIN = 50_000  # vectors trained on (a sample); all are encoded
ENCODE_BATCH = 4096


def check_bits(bits: int) -> None:
    if bits < 8 or bits > 4096 or bits % 8:
        raise CodesError(
            f"--bits {bits}: codes are packed in bytes for FAISS; use a multiple of 8 "
            "from 8 to 4096 (e.g. 32, 64, 256)"
        )


def _net(dim: int, bits: int):
    import torch.nn as nn

    sizes = [dim, *HIDDEN, bits]

    def stack(sz):
        layers = []
        for a, b in zip(sz, sz[1:], strict=False):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1])  # no ReLU on the last layer

    encoder = stack(sizes)  # ends in the code units' input (logistic applied outside)
    decoder = stack(sizes[::-1])
    return nn.ModuleDict({"encoder": encoder, "decoder": decoder})


@dataclass
class Coder:
    """A trained autoencoder with its input normalisation: fc7 vectors -> binary codes."""

    net: object  # torch ModuleDict(encoder, decoder)
    mean: np.ndarray  # float32 (dim,)
    components: np.ndarray  # float32 (k, dim), orthonormal rows: the PCA projection
    scale: float  # divides the projected coordinates
    bits: int
    fingerprint: str  # of the model whose fc7 features it was trained on
    history: list[float] = field(default_factory=list)  # reconstruction error per epoch
    trained_on: int = 0

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def _project(self, vecs: np.ndarray) -> np.ndarray:
        return (np.asarray(vecs, np.float32) - self.mean) @ self.components.T

    def _inputs(self, vecs: np.ndarray):
        import torch

        return torch.from_numpy(self._project(vecs) / self.scale)

    def bits01(self, vecs: np.ndarray) -> np.ndarray:
        """uint8 (n, bits) of 0/1: logistic(code input) > 0.5, i.e. code input > 0."""
        import torch

        vecs = np.asarray(vecs, np.float32).reshape(-1, self.dim)
        out = np.empty((len(vecs), self.bits), np.uint8)
        self.net.eval()
        with torch.inference_mode(), _one_thread():
            for s in range(0, len(vecs), ENCODE_BATCH):
                z = self.net["encoder"](self._inputs(vecs[s : s + ENCODE_BATCH]))
                out[s : s + ENCODE_BATCH] = (z > 0).numpy()
        return out

    def encode(self, vecs: np.ndarray) -> np.ndarray:
        """Packed codes, uint8 (n, bits/8), the layout FAISS binary indexes take."""
        return np.packbits(self.bits01(vecs), axis=1)

    def save(self, path: Path) -> None:
        import torch

        payload = {
            "format": FORMAT,
            "bits": self.bits,
            "hidden": list(HIDDEN),
            "fingerprint": self.fingerprint,
            "mean": torch.from_numpy(self.mean),
            "components": torch.from_numpy(self.components),
            "scale": float(self.scale),
            "history": [float(h) for h in self.history],
            "trained_on": int(self.trained_on),
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
        }
        atomic_write(path, lambda f: torch.save(payload, f))


def load(path: Path, fingerprint: str | None = None) -> Coder:
    """Read a saved autoencoder (no pickled code runs); refuse one trained for other
    features when `fingerprint` (the index's model) is given."""
    import torch

    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError("not an alexsearch autoencoder")
        if list(raw.get("hidden", [])) != list(HIDDEN):
            raise ValueError(f"hidden layers {raw.get('hidden')} differ from {list(HIDDEN)}")
        components = raw["components"].numpy().astype(np.float32)
        net = _net(components.shape[0], int(raw["bits"]))
        net.load_state_dict(raw["state_dict"])
    except FileNotFoundError:
        raise CodesError(f"{path}: no such autoencoder file") from None
    except Exception as e:  # torch raises many kinds for a bad file; all mean the same here
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CodesError(f"{path}: not a readable autoencoder ({msg})") from None
    coder = Coder(
        net=net,
        mean=raw["mean"].numpy().astype(np.float32),
        components=components,
        scale=float(raw["scale"]),
        bits=int(raw["bits"]),
        fingerprint=str(raw["fingerprint"]),
        history=list(raw.get("history", [])),
        trained_on=int(raw.get("trained_on", 0)),
    )
    if fingerprint is not None and coder.fingerprint != fingerprint:
        raise CodesError(
            f"{path} was trained on features of weights {coder.fingerprint}, but this index "
            f"holds features of weights {fingerprint}; train one for it with `alexsearch codes`"
        )
    return coder


@contextmanager
def _one_thread():
    """Run torch on one thread: the autoencoder's matrices are small (batch x 512), so
    a second thread gains little, and on a shared, busy CPU OpenMP threads waiting for
    each other made training ~10x slower in our measurements."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pca(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The first k principal directions (k, dim) of centred x, orthonormal rows."""
    import torch

    k = min(k, *x.shape)
    if min(x.shape) <= 2 * k:  # small: exact
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        return np.ascontiguousarray(vt[:k], np.float32)
    torch.manual_seed(seed)
    _, _, v = torch.svd_lowrank(torch.from_numpy(x), q=k + 8, niter=1)
    return np.ascontiguousarray(v[:, :k].T.numpy(), np.float32)


def train(
    vecs: np.ndarray,
    bits: int = DEFAULT_BITS,
    epochs: int = DEFAULT_EPOCHS,
    fingerprint: str = "",
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: Progress | None = None,  # after each epoch: the reconstruction error
) -> Coder:
    """Train an autoencoder on fc7 vectors (n, dim) with Adam on mini-batches, on the CPU."""

    check_bits(bits)
    vecs = np.asarray(vecs, np.float32)
    if len(vecs) < 2:
        raise CodesError(f"an autoencoder needs at least 2 vectors to train on, not {len(vecs)}")
    if epochs < 1:
        raise CodesError("--epochs must be at least 1")
    with _one_thread():
        return _train(vecs, bits, epochs, fingerprint, batch_size, lr, seed, progress)


def _train(vecs, bits, epochs, fingerprint, batch_size, lr, seed, progress) -> Coder:
    import torch

    rng = np.random.default_rng(seed)
    if len(vecs) > MAX_TRAIN:
        vecs = vecs[np.sort(rng.choice(len(vecs), MAX_TRAIN, replace=False))]
    mean = vecs.mean(0)
    centred = vecs - mean
    fit = centred[np.sort(rng.choice(len(vecs), min(len(vecs), 2048), replace=False))]
    components = _pca(fit, PCA_DIM, seed)
    proj = centred @ components.T
    scale = float(np.sqrt((proj**2).mean())) or 1.0
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = _net(components.shape[0], bits)
    coder = Coder(net, mean, components, scale, bits, fingerprint, [], len(vecs))
    x = torch.from_numpy(proj / scale)
    # a fixed probe for the per-epoch error, with the energy the projection already loses
    probe = torch.randperm(len(x), generator=gen)[:2048]
    total = float((centred[probe.numpy()] ** 2).sum())
    lost = total - float((proj[probe.numpy()] ** 2).sum())
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ramp = max(1, epochs // 2)
    for epoch in range(epochs):
        sigma = NOISE * min(1.0, (epoch + 1) / ramp)
        net.train()
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            xb = x[idx]
            z = net["encoder"](xb)
            z = z + sigma * torch.randn(z.shape, generator=gen)
            loss = torch.nn.functional.mse_loss(net["decoder"](torch.sigmoid(z)), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        err = _binary_sq_error(net, x[probe]) * scale**2
        coder.history.append((err + max(lost, 0.0)) / max(total, 1e-30))
        if progress:
            progress("training autoencoder", epoch + 1, epochs, error=coder.history[-1])
    net.eval()
    return coder


def _binary_sq_error(net, x) -> float:
    """Summed squared reconstruction error from the thresholded (binary) codes."""
    import torch

    net.eval()
    with torch.inference_mode():
        b = (net["encoder"](x) > 0).float()
        return float(((net["decoder"](b) - x) ** 2).sum())
