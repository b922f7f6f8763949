"""A tiny protobuf encoder for Caffe's files, written for the tests independently of the
reader in alexsearch/caffemodel.py. Messages are lists of byte chunks (numpy buffers are
not copied), so a full-size bvlc_alexnet can be written without holding it twice."""

from __future__ import annotations

import struct

import numpy as np

BVLC_SHAPES = {
    "conv1": (96, 3, 11, 11),
    "conv2": (256, 48, 5, 5),
    "conv3": (384, 256, 3, 3),
    "conv4": (384, 192, 3, 3),
    "conv5": (256, 192, 3, 3),
    "fc6": (4096, 9216),
    "fc7": (4096, 4096),
    "fc8": (1000, 4096),
}
# V1LayerParameter.LayerType values from caffe.proto
V1_ENUM = {"Convolution": 4, "InnerProduct": 14, "ReLU": 18, "LRN": 15, "Pooling": 17, "Data": 5}


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def size(chunks) -> int:
    return sum(memoryview(c).nbytes for c in chunks)


def ld(field: int, chunks) -> list:
    """A length-delimited field holding the concatenation of `chunks`."""
    if isinstance(chunks, (bytes, bytearray, memoryview)):
        chunks = [chunks]
    return [key(field, 2) + varint(size(chunks)), *chunks]


def vi(field: int, n: int) -> list:
    return [key(field, 0) + varint(n)]


def blob(arr: np.ndarray, legacy: bool = True, packed: bool = True, shape=None) -> list:
    """BlobProto: legacy num/channels/height/width (left-padded with ones) or BlobShape."""
    arr = np.ascontiguousarray(arr, dtype="<f4")
    shape = arr.shape if shape is None else shape
    if legacy:
        dims = (1,) * (4 - len(shape)) + tuple(shape)
        head = [c for i, d in enumerate(dims) for c in vi(i + 1, d)]
    else:
        head = ld(7, ld(1, b"".join(varint(d) for d in shape)))
    if packed:
        data = ld(5, memoryview(arr).cast("B"))
    else:
        data = [b"".join(key(5, 5) + struct.pack("<f", v) for v in arr.ravel())]
    return head + data


def layer(name: str, kind: str, blobs: list, v1: bool) -> list:
    if v1:
        chunks = ld(4, name.encode()) + vi(5, V1_ENUM[kind])
        for b in blobs:
            chunks += ld(6, b)
    else:
        chunks = ld(1, name.encode()) + ld(2, kind.encode())
        for b in blobs:
            chunks += ld(7, b)
    return chunks


def net(layers: list, v1: bool, name: str = "AlexNet") -> list:
    chunks = ld(1, name.encode())
    for lay in layers:
        chunks += ld(2 if v1 else 100, lay)
    return chunks


def bvlc_params(seed: int = 0, shapes=BVLC_SHAPES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random bvlc-shaped weights, scaled (He) so activations stay O(input) through the net
    and Caffe's LRN (alpha/n * sum of squares ~ 1) really changes them."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:]))
        w = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        b = rng.standard_normal(shape[0], dtype=np.float32) * np.float32(0.5)
        out[name] = (w, b)
    return out


def bvlc_net(params, v1: bool, legacy: bool | None = None) -> list:
    """bvlc_alexnet's layer sequence (with the weightless layers between) in V1 or V2."""
    legacy = v1 if legacy is None else legacy
    layers = [layer("data", "Data", [], v1)]
    for name, (w, b) in params.items():
        kind = "Convolution" if name.startswith("conv") else "InnerProduct"
        layers.append(layer(name, kind, [blob(w, legacy), blob(b, legacy)], v1))
        if name != "fc8":
            layers.append(layer(name.replace("conv", "relu").replace("fc", "relu"), "ReLU", [], v1))
        if name in ("conv1", "conv2"):
            layers.append(layer(name.replace("conv", "norm"), "LRN", [], v1))
    return net(layers, v1)


def write(path, chunks) -> None:
    with open(path, "wb") as f:
        f.writelines(chunks)


def encode(chunks) -> bytes:
    return b"".join(bytes(c) for c in chunks)
