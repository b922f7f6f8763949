"""Training throughput (img/s) of `alexsearch train`'s step beside a plain baseline, same run.

(a) synthetic: uint8 256x256 batches already in memory, so only the step counts;
(b) JPEG folder: decoding included (DataLoader workers).

ours:     alexsearch.train: uint8 batches (pinned) -> crop/flip/mean/PCA lighting on the
          device, PaperSGD (foreach), bf16 autocast + channels_last on CUDA, --compile.
baseline: the usual eager fp32 loop: torchvision ImageFolder + transforms (Resize 256,
          CenterCrop 256, RandomCrop 224, flip, ToTensor, Normalize) and torch.optim.SGD,
          on the same model.

    python bench/train_throughput.py [--device auto] [--batch-size 128] [--steps 20]
        [--jpeg-dir DIR | (CIFAR-10 from ../shared/data, extracted to /tmp)] [--compile]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alexsearch.data import loader  # noqa: E402
from alexsearch.images import folders, preprocess  # noqa: E402
from alexsearch.net.alexnet import AlexNet  # noqa: E402
from alexsearch.net.arch import ArchConfig  # noqa: E402
from alexsearch.train import inputs, plan, sgd  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(batches, step, device, warmup: int) -> float:
    """img/s over the batches after `warmup` of them."""
    n, t0 = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        k = step(batch)
        if t0 is not None:
            n += k
    sync(device)
    return n / (time.perf_counter() - t0)


def make_model(device, fast: bool, compile_: bool, classes: int):
    torch.manual_seed(0)
    net = AlexNet(ArchConfig(num_classes=classes)).to(device).train()
    if fast and device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    step_model = torch.compile(net) if (fast and compile_) else net
    return net, step_model


def ours_step(device, compile_, classes, pre):
    net, model = make_model(device, True, compile_, classes)
    opt = sgd.PaperSGD(net.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    autocast = plan.autocast_for(device, True)
    feed = inputs.Inputs(pre, 0.1, [device], channels_last=True)

    def step(batch):
        u8, labels = batch[0], batch[1]
        x = feed.augment(u8, gen, [device])
        with autocast():
            loss = F.cross_entropy(model(x).float(), labels.to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(labels)

    return step


def baseline_step(device, classes):
    _, model = make_model(device, False, False, classes)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)

    def step(batch):
        x, labels = batch[0].to(device), batch[1].to(device)
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return len(labels)

    return step


def jpeg_folder(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    root = Path("/tmp/cifar10/train")
    if not root.is_dir():
        if not SHARED.exists():
            sys.exit(
                "give --jpeg-dir (an ImageFolder); ../shared/data/cifar10-jpeg.tar.gz is absent"
            )
        subprocess.run(["tar", "-xzf", str(SHARED), "-C", "/tmp"], check=True)
    return root


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after one warm-up)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--jpeg-dir")
    ap.add_argument("--compile", action="store_true")
    return ap


def main() -> None:
    a = parser().parse_args()
    device = plan.setup_plan(a.device).device  # its CUDA flags as training sets them
    bs, steps, classes = a.batch_size, a.steps, 10
    pre = preprocess.Preprocess(
        mean=[125.3, 123.0, 113.9],
        pca_eigval=[0.2, 0.02, 0.005],
        pca_eigvec=torch.linalg.qr(torch.randn(3, 3))[0].tolist(),
    )
    print(
        f"device {device}, batch {bs}, {steps} timed steps, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    results = {}

    # (a) synthetic
    u8 = torch.randint(0, 256, (bs, 3, 256, 256), dtype=torch.uint8)
    labels = torch.randint(0, classes, (bs,))
    if device.type == "cuda":
        u8 = u8.pin_memory()
    results["synthetic ours"] = timed(
        [(u8, labels)] * (steps + 1), ours_step(device, a.compile, classes, pre), device, 1
    )
    x = torch.randn(bs, 3, 224, 224)
    results["synthetic baseline"] = timed(
        [(x, labels)] * (steps + 1), baseline_step(device, classes), device, 1
    )

    # (b) JPEG folder
    from torchvision import datasets, transforms

    root = jpeg_folder(a.jpeg_dir)
    classes_found, samples = folders.labelled_folder(root)
    n = min(len(samples), bs * (steps + 1))
    samples = samples[:: max(1, len(samples) // n)][:n]
    ours = loader.loader(samples, bs, a.workers, pin=device.type == "cuda")
    results["jpeg ours"] = timed(
        ours, ours_step(device, a.compile, len(classes_found), pre), device, 1
    )
    tv = datasets.ImageFolder(
        str(root),
        transforms.Compose(
            [
                transforms.Resize(256),
                transforms.CenterCrop(256),
                transforms.RandomCrop(224),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        ),
    )
    keep = set(p for p, _ in samples)
    subset = [i for i, (p, _) in enumerate(tv.samples) if p in keep]
    base = torch.utils.data.DataLoader(
        torch.utils.data.Subset(tv, subset), batch_size=bs, num_workers=a.workers
    )
    results["jpeg baseline"] = timed(base, baseline_step(device, len(classes_found)), device, 1)

    print(f"{'':22s}{'img/s':>10s}")
    for k, v in results.items():
        print(f"{k:22s}{v:10.1f}")
    for kind in ("synthetic", "jpeg"):
        ratio = results[f"{kind} ours"] / results[f"{kind} baseline"]
        print(f"{kind}: ours / baseline = {ratio:.2f}x")


if __name__ == "__main__":
    main()
