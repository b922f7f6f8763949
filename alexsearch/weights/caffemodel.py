"""Read Caffe's binary files (a .caffemodel NetParameter, a .binaryproto mean BlobProto).

A small reader of the protobuf wire format that knows only the few fields we need,
so no protobuf dependency and no generated code. The files may come from anywhere,
so every length is checked against the bytes that remain before it is used, every
blob's element count is checked against its shape before an array is made, the
counts of layers, blobs, dimensions and pieces are capped, and nothing recurses
deeper than the fixed schema below. Any problem raises CaffemodelError with one line
that says where in the file it is. Float data come back as numpy views into the
file's bytes (no copy).

The schema (caffe.proto), field numbers in brackets:

    NetParameter: name [1], layers [2] (V1LayerParameter), layer [100] (LayerParameter)
    V1LayerParameter: name [4], type [5] (enum), blobs [6]
    LayerParameter:   name [1], type [2] (string), blobs [7]
    BlobProto: num [1], channels [2], height [3], width [4], data [5] (float),
               shape [7] (BlobShape), double_data [8] (double)
    BlobShape: dim [1] (int64)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError

MAX_LAYERS = 100_000
MAX_BLOBS = 64  # per layer
MAX_ALL_BLOBS = 200_000
MAX_DIMS = 32  # per blob shape
MAX_PIECES = 4096  # separately stored runs of one blob's data

VARINT, FIXED64, BYTES, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5

# The V1 layer-type enum values that matter here (caffe.proto, V1LayerParameter.LayerType).
V1_TYPES = {
    4: "Convolution",
    5: "Data",
    6: "Dropout",
    14: "InnerProduct",
    15: "LRN",
    17: "Pooling",
    18: "ReLU",
    20: "Softmax",
    21: "SoftmaxWithLoss",
}


class CaffemodelError(UserError):
    """A Caffe file that cannot be read, with one line saying why and where."""


@dataclass
class Blob:
    shape: tuple[int, ...]
    data: np.ndarray  # 1-D, float32 or float64, len == prod(shape)

    def array(self) -> np.ndarray:
        """A writable float32 copy in `shape`. A double beyond float32 becomes inf, which
        weights.check_fits then refuses by name: no warning of our own here."""
        with np.errstate(over="ignore"):
            return self.data.astype(np.float32).reshape(self.shape)


@dataclass
class Layer:
    name: str
    type: str
    blobs: list[Blob] = field(default_factory=list)


@dataclass
class Net:
    layout: str  # "V1" (NetParameter.layers) or "V2" (NetParameter.layer)
    name: str
    layers: list[Layer]

    def by_name(self) -> dict[str, Layer]:
        """Layers that hold blobs, by name."""
        return {layer.name: layer for layer in self.layers if layer.blobs}


class _Reader:
    """Walks the fields of one message inside buf[start:end]."""

    def __init__(self, buf: memoryview, start: int, end: int, where: str):
        self.buf, self.pos, self.end, self.where = buf, start, end, where

    def fail(self, why: str):
        raise CaffemodelError(f"{why} (at byte {self.pos}, in {self.where})")

    def varint(self) -> int:
        value, shift = 0, 0
        for _ in range(10):
            if self.pos >= self.end:
                self.fail("truncated number")
            b = self.buf[self.pos]
            self.pos += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
        self.fail("number longer than 10 bytes")

    def fields(self):
        """Yield (field number, wire type, value): an int, or (start, end) for bytes."""
        while self.pos < self.end:
            key = self.varint()
            number, wire = key >> 3, key & 7
            if number == 0:
                self.fail("field number 0")
            if wire == VARINT:
                yield number, wire, self.varint()
            elif wire in (FIXED32, FIXED64):
                size = 4 if wire == FIXED32 else 8
                if self.end - self.pos < size:
                    self.fail(f"truncated field {number}")
                start = self.pos
                self.pos += size
                yield number, wire, (start, self.pos)
            elif wire == BYTES:
                length = self.varint()
                if length > self.end - self.pos:
                    self.fail(
                        f"field {number} claims {length} bytes but {self.end - self.pos} remain"
                    )
                start = self.pos
                self.pos += length
                yield number, wire, (start, self.pos)
            else:  # groups (3, 4) are not in Caffe's schema; 6 and 7 do not exist
                self.fail(f"field {number} has wire type {wire}, not used by Caffe")


def _text(buf: memoryview, span: tuple[int, int]) -> str:
    return bytes(buf[span[0] : span[1]]).decode("utf-8", errors="replace")


def short_name(name: str) -> str:
    """A name from the file, fit for a one-line message (quoted, escaped, cut)."""
    return repr(name if len(name) <= 60 else name[:57] + "...")


def _expect(r: _Reader, wire: int, want: int, number: int, what: str) -> None:
    if wire != want:
        r.fail(f"{what} (field {number}) has wire type {wire}, expected {want}")


def _dims(buf: memoryview, span: tuple[int, int], where: str) -> list[int]:
    """BlobShape.dim: packed (or repeated) varints, at most MAX_DIMS of them."""
    dims: list[int] = []
    r = _Reader(buf, span[0], span[1], where)
    for number, wire, value in r.fields():
        if number != 1:
            continue
        if wire == VARINT:
            dims.append(value)
        elif wire == BYTES:
            inner = _Reader(buf, value[0], value[1], where)
            while inner.pos < inner.end:
                dims.append(inner.varint())
                if len(dims) > MAX_DIMS:
                    break
        else:
            r.fail(f"shape dimension has wire type {wire}")
        if len(dims) > MAX_DIMS:
            r.fail(f"blob shape has more than {MAX_DIMS} dimensions")
    for d in dims:
        if d >= 1 << 63:  # int64 on the wire: a negative dimension
            r.fail(f"negative dimension {d - (1 << 64)} in blob shape")
    return dims


def _float_run(buf: memoryview, pos: int, end: int, tag: int, size: int) -> int:
    """End of a run of non-packed values: (tag byte, `size` bytes) repeated from pos."""
    step = size + 1
    n = (end - pos) // step
    if n == 0:
        return pos
    rows = np.frombuffer(buf, np.uint8, count=n * step, offset=pos).reshape(n, step)
    bad = np.flatnonzero(rows[:, 0] != tag)
    return pos + step * (int(bad[0]) if bad.size else n)


def read_blob(buf: memoryview, span: tuple[int, int], where: str) -> Blob:
    """One BlobProto inside buf[span]."""
    r = _Reader(buf, span[0], span[1], where)
    legacy = {}
    shape = None
    pieces: list[np.ndarray] = []
    kinds = set()
    for number, wire, value in r.fields():
        if number in (1, 2, 3, 4):
            _expect(r, wire, VARINT, number, "blob dimension")
            if value >= 1 << 31:
                r.fail(f"blob dimension {value} out of range")
            legacy[number] = value
        elif number == 7:
            _expect(r, wire, BYTES, number, "blob shape")
            shape = _dims(buf, value, where)
        elif number in (5, 8):
            size, dtype, single = (4, "<f4", FIXED32) if number == 5 else (8, "<f8", FIXED64)
            kinds.add(number)
            if wire not in (BYTES, single):
                r.fail(f"blob data (field {number}) has wire type {wire}")
            start, stop = value
            if wire == BYTES:
                if (stop - start) % size:
                    r.fail(f"blob data of {stop - start} bytes is not a whole number of values")
                pieces.append(np.frombuffer(buf, dtype, count=(stop - start) // size, offset=start))
            else:
                # Not packed: (key, value) pairs, normally back to back; when the key is the
                # usual single byte, take the whole run at once instead of value by value.
                tag = (number << 3) | wire
                if buf[start - 1] == tag:
                    stop = r.pos = _float_run(buf, stop, r.end, tag, size)
                count = (stop - start + 1) // (size + 1)
                rows = np.frombuffer(buf, np.uint8, count=count * (size + 1), offset=start - 1)
                pieces.append(rows.reshape(count, size + 1)[:, 1:].copy().view(dtype).ravel())
            if len(pieces) > MAX_PIECES:
                r.fail(f"blob data split into more than {MAX_PIECES} pieces")
    if len(kinds) > 1:
        r.fail("blob holds both float and double data")
    have = sum(p.size for p in pieces)
    if shape is None:
        # Caffe's legacy 4-D shape (unset dimensions are 0, as in Caffe); with no shape
        # at all, a 1-D blob of whatever data there is.
        shape = [legacy.get(i, 0) for i in (1, 2, 3, 4)] if legacy else [have]
    count = 1
    for d in shape:
        count *= d
    if have != count:
        r.fail(f"blob holds {have} values but its shape {'x'.join(map(str, shape))} needs {count}")
    if len(pieces) == 1:
        data = pieces[0]
    elif pieces:
        data = np.concatenate(pieces)
    else:
        data = np.zeros(0, np.float32)
    return Blob(tuple(shape), data)


def _read_layer(buf: memoryview, span, v1: bool, index: int, budget: list[int]) -> Layer:
    name_f, type_f, blobs_f = (4, 5, 6) if v1 else (1, 2, 7)
    where = f"layer {index}"
    r = _Reader(buf, span[0], span[1], where)
    name, kind, blob_spans = "", "", []
    for number, wire, value in r.fields():
        if number == name_f:
            _expect(r, wire, BYTES, number, "layer name")
            name = _text(buf, value)
            where = r.where = f"layer {index} {short_name(name)}"
        elif number == type_f:
            if v1:
                _expect(r, wire, VARINT, number, "layer type")
                kind = V1_TYPES.get(value, f"V1 type {value}")
            else:
                _expect(r, wire, BYTES, number, "layer type")
                kind = _text(buf, value)
        elif number == blobs_f:
            _expect(r, wire, BYTES, number, "blob")
            blob_spans.append(value)
            if len(blob_spans) > MAX_BLOBS:
                r.fail(f"more than {MAX_BLOBS} blobs in one layer")
            budget[0] -= 1
            if budget[0] < 0:
                r.fail(f"more than {MAX_ALL_BLOBS} blobs in all")
    blobs = [read_blob(buf, s, f"blob {i} of {where}") for i, s in enumerate(blob_spans)]
    return Layer(name, kind, blobs)


def _buffer(source: bytes | bytearray | memoryview | str | os.PathLike) -> tuple[memoryview, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return memoryview(source).cast("B"), ""
    try:
        with open(source, "rb") as f:
            return memoryview(f.read()), f"{source}: "
    except FileNotFoundError:
        raise CaffemodelError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise CaffemodelError(f"{source}: is a folder, not a file") from None
    except OSError as e:
        raise CaffemodelError(f"{source}: cannot read ({e.strerror or e})") from None


def read_net(source) -> Net:
    """A caffemodel's layers and their blobs (bytes or a path)."""
    buf, prefix = _buffer(source)
    try:
        return _read_net(buf)
    except CaffemodelError as e:
        raise CaffemodelError(f"{prefix}not a readable caffemodel: {e}") from None


def _read_net(buf: memoryview) -> Net:
    if len(buf) == 0:
        raise CaffemodelError("empty file")
    head = bytes(buf[:64]).lstrip()
    if head[:5] in (b"name:", b"layer") or head[:6] == b"layers" or head[:6] == b"input:":
        raise CaffemodelError("this is a text prototxt (the network's layout), not the weights")
    r = _Reader(buf, 0, len(buf), "the network")
    name, v1, v2 = "", [], []
    for number, wire, value in r.fields():
        if number == 1:
            _expect(r, wire, BYTES, number, "network name")
            name = _text(buf, value)
        elif number in (2, 100):
            _expect(r, wire, BYTES, number, "layer")
            (v1 if number == 2 else v2).append(value)
            if len(v1) + len(v2) > MAX_LAYERS:
                r.fail(f"more than {MAX_LAYERS} layers")
    if v1 and v2:
        raise CaffemodelError("holds both V1 'layers' and V2 'layer' entries")
    if not v1 and not v2:
        raise CaffemodelError("no layers (not a Caffe NetParameter)")
    spans = v1 or v2
    budget = [MAX_ALL_BLOBS]
    layers = [_read_layer(buf, s, bool(v1), i, budget) for i, s in enumerate(spans)]
    seen = set()
    for layer in layers:
        if layer.blobs:
            if layer.name in seen:
                raise CaffemodelError(f"two layers named {short_name(layer.name)} hold weights")
            seen.add(layer.name)
    return Net("V1" if v1 else "V2", name, layers)


def read_mean(source) -> Blob:
    """A .binaryproto BlobProto (Caffe's mean image)."""
    buf, prefix = _buffer(source)
    try:
        if len(buf) == 0:
            raise CaffemodelError("empty file")
        return read_blob(buf, (0, len(buf)), "the blob")
    except CaffemodelError as e:
        raise CaffemodelError(f"{prefix}not a readable Caffe blob (.binaryproto): {e}") from None
