"""Forward throughput (img/s, batch 64, CPU): our paper AlexNet beside torchvision's alexnet.

Both networks run in the same process, interleaved, and each figure is the median of
several timed batches, so a noisy neighbour on the machine hits both alike.

    python bench/forward.py [--batch 64] [--repeats 7] [--device cpu]

Modes:
  fp32 (NCHW)            the usual eager PyTorch call, for both networks
  fp32 channels_last     our fastest supported fp32 mode (oneDNN's NHWC kernels), for both
  bf16 channels_last     autocast to bfloat16, for both (only useful on CPUs with AVX-512 BF16/AMX
                         or on a GPU)
Our LRN is local_response_norm() in alexsearch/net/alexnet.py; "ours, torch LRN" swaps in
nn.LocalResponseNorm with the same constants, to show what the formulation saves.
--lrn-bf16 times the LRN of a bf16 batch (conv1's and conv2's outputs) as indexing runs it
(each image converted to float32 inside the per-image loop) beside converting the whole
batch first, and checks that both give the same numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torch import nn

from alexsearch.net.alexnet import AlexNet


class TorchLRNAlexNet(AlexNet):
    """Our network with torch's nn.LocalResponseNorm (paper constants), for comparison."""

    def _lrn(self, x):
        lrn = self.cfg.lrn
        # torch divides alpha by size; multiply back to get the paper's alpha.
        mod = nn.LocalResponseNorm(lrn.size, lrn.alpha * lrn.size, lrn.beta, lrn.k)
        halves = x.chunk(self.cfg.towers, 1)
        return torch.cat([mod(h) for h in halves], 1)


def median_rate(fn, x, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--torch-lrn", action="store_true", help="also time ours with torch's LRN")
    ap.add_argument("--lrn-bf16", action="store_true", help="time the LRN of a bf16 batch")
    args = ap.parse_args()
    if args.lrn_bf16:
        return lrn_bf16(args.batch, args.repeats)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224, device=dev) * 50
    nets = {"ours": AlexNet().eval(), "torchvision alexnet": torchvision.models.alexnet().eval()}
    if args.torch_lrn:
        nets["ours, torch LRN"] = TorchLRNAlexNet().eval()
    modes = [("fp32 NCHW", torch.contiguous_format, None)]
    modes.append(("fp32 channels_last", torch.channels_last, None))
    if dev.type == "cuda" or args.device == "cpu-bf16":
        modes.append(("bf16 channels_last", torch.channels_last, torch.bfloat16))
    print(
        f"device {dev}, batch {args.batch}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    for mode, fmt, dtype in modes:
        xm = x.contiguous(memory_format=fmt)
        models = {k: v.to(dev, memory_format=fmt) for k, v in nets.items()}
        times = {k: [] for k in models}
        with torch.inference_mode(), torch.autocast(dev.type, dtype, enabled=dtype is not None):
            for m in models.values():  # warm-up
                m(xm)
            for _ in range(args.repeats):  # interleaved so drift hits all alike
                for k, m in models.items():
                    times[k] += median_rate(m, xm, 1)
        rates = {k: args.batch / statistics.median(v) for k, v in times.items()}
        base = rates["torchvision alexnet"]
        for k, r in rates.items():
            print(f"{mode:20s} {k:22s} {r:8.1f} img/s   {r / base:5.2f}x torchvision")


def lrn_bf16(batch: int, repeats: int) -> None:
    from alexsearch.net.alexnet import local_response_norm
    from alexsearch.net.arch import PAPER

    g = torch.Generator().manual_seed(0)
    ways = {
        "per image to float32": lambda x: local_response_norm(x, PAPER.lrn, 2),
        "whole batch first": lambda x: local_response_norm(x.float(), PAPER.lrn, 2).to(x.dtype),
    }
    print(f"LRN of a bf16 batch of {batch}, channels_last, {torch.get_num_threads()} threads")
    for shape in [(batch, 96, 55, 55), (batch, 256, 27, 27)]:
        x = (torch.randn(*shape, generator=g).abs() * 3).to(torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            outs = {k: f(x) for k, f in ways.items()}  # also the warm-up
            times = {k: [] for k in ways}
            for _ in range(repeats):
                for k, f in ways.items():
                    t = time.perf_counter()
                    f(x)
                    times[k].append(time.perf_counter() - t)
        same = torch.equal(*outs.values())
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        print(
            f"{str(shape[1:]):16s} "
            + "   ".join(f"{k}: {v:6.1f} ms" for k, v in ms.items())
            + f"   same numbers: {same}"
        )


if __name__ == "__main__":
    main()
