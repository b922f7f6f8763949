"""Fuzz the caffemodel reader: whatever the bytes, it returns a consistent Net or raises its
own one-line CaffemodelError, never another exception. (bench/fuzz_caffemodel.py runs
the same mutations for longer.)"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from caffe_proto import blob, encode, key, layer, ld, net, varint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alexsearch.errors import UserError
from alexsearch.weights import caffemodel, importers
from alexsearch.weights.caffemodel import CaffemodelError


def seeds() -> list[bytes]:
    """Small valid files in every form the reader knows."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    fc = rng.standard_normal((3, 5)).astype(np.float32)
    doubles = ld(7, ld(1, b"\x03")) + ld(8, np.arange(3, dtype="<f8").tobytes())
    v1 = net(
        [
            layer("data", "Data", [], True),
            layer("conv1", "Convolution", [blob(w), blob(b)], True),
            layer("fc6", "InnerProduct", [blob(fc, packed=False), blob(b[:3])], True),
        ],
        v1=True,
    )
    v2 = net(
        [
            layer("conv1", "Convolution", [blob(w, legacy=False), blob(b, legacy=False)], False),
            layer("fc8", "InnerProduct", [blob(fc, legacy=False, packed=False), doubles], False),
        ],
        v1=False,
    )
    return [encode(v1), encode(v2), encode(blob(rng.standard_normal((3, 4, 4)), packed=True))]


SEEDS = seeds()


def check(data: bytes) -> None:
    """The property: a consistent Net, or CaffemodelError and nothing else."""
    try:
        result = caffemodel.read_net(data)
    except CaffemodelError as e:
        assert str(e) and "\n" not in str(e)
    else:
        for lay in result.layers:
            for b in lay.blobs:
                assert all(d >= 0 for d in b.shape)
                assert b.data.ndim == 1 and b.data.size == math.prod(b.shape)
                assert b.array().shape == b.shape
    try:
        mean = caffemodel.read_mean(data)
    except CaffemodelError as e:
        assert "\n" not in str(e)
    else:
        assert mean.data.size == math.prod(mean.shape)


seed = st.sampled_from(SEEDS)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(seed))
    kind = draw(st.sampled_from(["truncate", "flip", "hostile", "splice", "random"]))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "hostile":
        # a field that claims far more bytes than the file has, or a runaway number
        field = draw(st.sampled_from([1, 2, 5, 6, 7, 8, 100]))
        claim = draw(st.sampled_from([2**31, 2**32 + 5, 2**63, 2**64 - 1, len(data) + 1]))
        junk = key(field, 2) + varint(claim)
        if draw(st.booleans()):
            junk = b"\xff" * draw(st.integers(10, 20))
        pos = draw(st.integers(0, len(data)))
        return bytes(data[:pos]) + junk + bytes(data[pos:])
    if kind == "splice":
        a, b = sorted(draw(st.integers(0, len(data))) for _ in range(2))
        return bytes(data[:a]) + draw(st.binary(max_size=32)) + bytes(data[b:])
    return draw(st.binary(max_size=512))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_reader_only_ever_raises_its_own_clear_error(data):
    check(data)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2, 5]))
def test_any_field_with_any_value(prefix, value, wire):
    # every top-level field number the schema uses, with every wire type and extreme values
    for field in (1, 2, 100):
        body = key(field, wire) + (varint(value) if wire in (0, 2) else b"\x00" * (4 + 4 * wire))
        check(prefix + body)
        check(body + prefix)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_importer_only_ever_raises_user_errors(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.caffemodel"
        path.write_bytes(data)
        try:
            importers.import_caffemodel(path)
        except UserError as e:
            assert "\n" not in str(e)
        else:  # a handful of random bytes are never a whole bvlc_alexnet
            raise AssertionError("imported garbage")


def test_the_seeds_are_valid():
    for data in SEEDS[:2]:
        n = caffemodel.read_net(data)
        assert sum(len(la.blobs) for la in n.layers) == 4
    assert caffemodel.read_mean(SEEDS[2]).shape == (1, 3, 4, 4)  # legacy num x c x h x w
