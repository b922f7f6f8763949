"""The checkpoint: weights + architecture + preprocessing + class names, one file.

A checkpoint is a ``torch.save`` of plain containers and tensors. It carries a
fingerprint (SHA-256 over the tensors in key order), computed once when written, which
indexes record so a query with other weights is refused.

One reader and one validator serve both paths. `read` (torch-free, what a CPU query
uses) checks every zip CRC, unpickles with an allowlist and returns the tensors as
numpy arrays; `load` (training, indexing, GPUs) is `read` with the arrays made into
torch tensors. Only a file `read` reports as beyond its allowlist (a bfloat16 storage,
a pickled Parameter, ...) goes to ``torch.load(weights_only=True)``, and then through
the same validation; any other problem is a WeightsError with one clear line. Loading
never executes pickled code.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import WeightsError
from ..images.preprocess import Preprocess
from ..net.arch import PAPER, ArchConfig, expected_shapes
from . import checkpoint_file
from .checkpoint_file import FORMAT, VERSION, Unsupported


@dataclass
class Checkpoint:
    arch: ArchConfig
    preprocess: Preprocess
    state_dict: dict  # name -> numpy array (read) or torch tensor (load)
    classes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # provenance: source, training run, epoch...
    fingerprint: str = ""
    extra: dict = field(default_factory=dict)  # training state (optimizer, RNG) when resuming

    def build(self, device="cpu"):
        """The torch network (net.alexnet.AlexNet) in eval mode on `device`."""
        import torch

        from ..net.alexnet import AlexNet

        with torch.device("meta"):  # no throwaway allocation: take the loaded tensors as is
            model = AlexNet(self.arch, init=False)
        model.load_state_dict(_tensors(self.state_dict), assign=True)
        # float64 or float16 weights (a valid checkpoint) still compute in float32, the
        # precision of every input and every index
        return model.float().to(device).eval()

    def describe(self) -> dict:
        n = sum(int(np.prod(t.shape)) for t in self.state_dict.values())
        return {
            "architecture": self.arch.name,
            "towers": self.arch.towers,
            "parameters": n,
            "classes": self.arch.num_classes,
            "class_names": len(self.classes),
            "input_size": self.preprocess.input_size,
            "channel_order": self.preprocess.channel_order,
            "pixel_scale": self.preprocess.scale,
            "geometry": self.preprocess.geometry(),
            "mean": "image" if np.asarray(self.preprocess.mean).ndim > 1 else "per-channel",
            "lrn": None if self.arch.lrn is None else self.arch.lrn.__dict__,
            "fingerprint": self.fingerprint,
            **{k: v for k, v in self.meta.items() if isinstance(v, (str, int, float))},
        }


# --------------------------------------------------------------------------- reading


def read(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint at `path` with numpy arrays (views of a private memory map), without
    torch. Raises WeightsError for anything unusable, Unsupported for content beyond this
    reader (which `load` then hands to torch)."""
    path = Path(path)
    _check_file(path)
    try:
        raw = checkpoint_file.read(path)  # every CRC checked first
    except checkpoint_file.ArchiveError as e:
        raise WeightsError(f"{path}: {e}") from None
    except OSError as e:
        raise WeightsError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    return _validate(raw, path)


def load(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint at `path` with torch tensors on the CPU (copies, not views of the
    file, which may be replaced while they live). Any problem is a WeightsError."""
    try:
        ckpt = read(path)
    except Unsupported:
        return _validate(_torch_load(Path(path)), Path(path))
    ckpt.state_dict = _tensors(ckpt.state_dict)
    ckpt.extra = _tensors(ckpt.extra)
    return ckpt


def _check_file(path: Path) -> None:
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file")
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, not a weights file")
    if not zipfile.is_zipfile(path):
        hint = ""
        if path.suffix in (".caffemodel", ".pth", ".pt"):
            hint = ": `alexsearch weights import` it first"
        raise WeightsError(f"{path}: not a checkpoint (not a PyTorch zip archive){hint}")


def _torch_load(path: Path) -> dict:
    """torch's own reader, for what the allowlisted reader does not know; its CRCs were
    checked by that reader already (torch.load skips them)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"{path}: refused: it holds pickled Python objects beyond tensors and plain "
            "containers, and alexsearch never runs pickled code"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: not a readable checkpoint ({msg})") from None
    except Exception as e:
        raise WeightsError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None


def _validate(raw, path: Path) -> Checkpoint:
    """The one validator: format, version, architecture, preprocessing, and tensors that
    fit the architecture (numpy arrays or torch tensors alike)."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        hint = ""
        if isinstance(raw, dict) and "features.0.weight" in raw:
            hint = " (it looks like a torchvision state dict: `alexsearch weights import` it)"
        raise WeightsError(f"{path}: not an alexsearch checkpoint{hint}")
    if raw.get("version", 0) > VERSION:
        raise WeightsError(f"{path}: checkpoint version {raw['version']} is newer than this tool")
    try:
        arch = ArchConfig.from_dict(raw["arch"])
        pre = Preprocess.from_dict(raw["preprocess"])
        sd = raw["state_dict"]
        if not isinstance(sd, dict) or not all(_is_array(v) for v in sd.values()):
            raise WeightsError(f"{path}: state_dict is not a mapping of tensors")
        check_fits(arch, sd)
        return Checkpoint(
            arch=arch,
            preprocess=pre,
            state_dict=dict(sd),
            classes=list(raw.get("classes") or []),
            meta=dict(raw.get("meta") or {}),
            fingerprint=str(raw.get("fingerprint") or ""),
            extra=dict(raw.get("extra") or {}),
        )
    except WeightsError as e:
        msg = str(e)
        raise WeightsError(msg if msg.startswith(f"{path}:") else f"{path}: {msg}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # RuntimeError: torch
        # refusing an impossible architecture (negative or zero sizes) while sizing it
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise WeightsError(f"{path}: malformed checkpoint ({type(e).__name__}: {msg})") from None


def check_fits(arch: ArchConfig, state_dict: dict) -> None:
    """Refuse tensors that do not fit the architecture, naming the first difference."""
    want = expected_shapes(arch)
    missing = sorted(set(want) - set(state_dict))
    extra = sorted(set(state_dict) - set(want))
    if missing:
        raise WeightsError(f"weights lack {', '.join(missing[:3])} for a {arch.name} network")
    if extra:
        raise WeightsError(f"weights hold unexpected {', '.join(extra[:3])}")
    for key, shape in want.items():
        t = state_dict[key]
        got = tuple(t.shape)
        if got != shape:
            raise WeightsError(
                f"{key} has shape {'x'.join(map(str, got))} but the stored architecture "
                f"({arch.name}, {arch.num_classes} classes) needs {'x'.join(map(str, shape))}"
            )
        if not _is_float(t):
            raise WeightsError(f"{key} is {t.dtype}, not floating point")
        if not _all_finite(t):
            raise WeightsError(
                f"{key} holds NaN or infinite values (a diverged training run or a damaged file)"
            )


def _is_torch(t) -> bool:
    return type(t).__module__.split(".")[0] == "torch"


def _is_array(t) -> bool:
    return isinstance(t, np.ndarray) or _is_torch(t)


def _is_float(t) -> bool:
    return t.is_floating_point() if _is_torch(t) else np.issubdtype(t.dtype, np.floating)


def _all_finite(t) -> bool:
    if _is_torch(t):
        import torch

        return bool(torch.isfinite(t).all())
    return bool(np.isfinite(t).all())


def _tensors(obj):
    """numpy arrays -> torch tensors, through dicts, lists and tuples (torch tensors kept).
    A writable array (also a view of checkpoint_file's private map) is shared; a read-only
    one is copied."""
    if isinstance(obj, np.ndarray):
        import torch

        return torch.from_numpy(obj if obj.flags.writeable else np.array(obj))
    if isinstance(obj, dict):
        return type(obj)((k, _tensors(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors(v) for v in obj)
    return obj


# --------------------------------------------------------------------------- writing


def fingerprint(state_dict: dict) -> str:
    """SHA-256 (16 hex digits) over each tensor's name, shape and bytes, in key order."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        a = t.detach().cpu().contiguous() if _is_torch(t) else np.ascontiguousarray(t)
        h.update(key.encode())
        h.update(str(tuple(a.shape)).encode())
        if _is_torch(a):
            import torch

            h.update(a.view(torch.uint8).numpy().tobytes() if a.numel() else b"")
        else:
            h.update(a.view(np.uint8).tobytes() if a.size else b"")
    return h.hexdigest()[:16]


def save(ckpt: Checkpoint, path: str | os.PathLike) -> str:
    """Write atomically (a temporary file beside it, fsync, rename); returns the fingerprint."""
    import torch

    sd = {k: v.detach().cpu().contiguous() for k, v in _tensors(ckpt.state_dict).items()}
    ckpt.fingerprint = fingerprint(sd)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": ckpt.arch.to_dict(),
        "preprocess": ckpt.preprocess.to_dict(),
        "classes": list(ckpt.classes),
        "meta": dict(ckpt.meta),
        "fingerprint": ckpt.fingerprint,
        "state_dict": sd,
        "extra": _tensors(ckpt.extra),
    }
    atomic_write(path, lambda f: torch.save(payload, f))
    return ckpt.fingerprint


def paper_preprocess() -> Preprocess:
    """The paper's input convention before training statistics are known.

    RGB on the 0..255 scale minus a per-channel mean; until a training set's mean is
    measured we use ImageNet's (the paper's training set) on that scale.
    """
    return Preprocess(mean=[123.68, 116.78, 103.94])


def init_checkpoint(num_classes: int = 1000, seed: int = 0, classes=None) -> Checkpoint:
    """An untrained, paper-initialised two-tower network."""
    import torch

    from ..net.alexnet import AlexNet

    if num_classes < 1:
        raise WeightsError("--classes must be at least 1")
    torch.manual_seed(seed)
    arch = ArchConfig(num_classes=num_classes) if num_classes != PAPER.num_classes else PAPER
    model = AlexNet(arch)
    names = list(classes) if classes else [f"class_{i}" for i in range(num_classes)]
    return Checkpoint(
        arch=arch,
        preprocess=paper_preprocess(),
        state_dict=model.state_dict(),
        classes=names,
        meta={"source": "paper init (untrained)", "seed": seed},
    )
