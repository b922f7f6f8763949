"""Fuzz the image decode path: mutated JPEG/PNG/GIF/... bytes either decode to a usable
RGB image or raise decode.ImageError, never anything else. (bench/fuzz_decode.py runs the
same properties longer.)"""

import io

from corpora import photo_bytes, tiny_network
from figures import FIGURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alexsearch.images import decode, geometry, preprocess
from alexsearch.index import extract

SEEDS = {
    fmt: photo_bytes(fmt, seed=i, size=(40, 30))
    for i, fmt in enumerate(("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"))
}
SEEDS["PROGRESSIVE_JPEG"] = photo_bytes("JPEG", seed=9, size=(40, 30), progressive=True)
MAX_MP = 2.0  # keeps a mutated size field from costing a big (allowed) allocation
NET = tiny_network().eval()  # fc7 of 32: the extraction path at a millisecond a file
PRE = preprocess.Preprocess()


@st.composite
def mutated(draw):
    """A seed file with a few byte-level mutations: flips, overwrites, cuts, splices,
    and header-size fields set to extremes."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    b = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "dup", "big"]))
        i = draw(st.integers(0, max(0, len(b) - 1)))
        if op == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            b[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del b[i : i + draw(st.integers(1, 64))]
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=32))
        elif op == "dup":
            j = draw(st.integers(0, max(0, len(b) - 1)))
            b[i:i] = b[j : j + draw(st.integers(1, 128))]
        else:  # a big value where a header keeps sizes (the first 64 bytes)
            k = min(i, 60)
            b[k : k + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff"]))
        if not b:
            break
    return name, bytes(b)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated())
def test_decode_of_mutated_images_raises_only_image_error(case):
    _, raw = case
    FIGURES["fuzzed_images"] += 1
    try:
        img = decode.decode(io.BytesIO(raw), max_megapixels=MAX_MP)
    except decode.ImageError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert img.mode == "RGB" and img.width >= 1 and img.height >= 1
    u8 = geometry.resize_centre(img)  # the rest of the indexing path takes it too
    assert u8.shape == (256, 256, 3)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(mutated())
def test_extraction_worker_reports_instead_of_raising(tmp_path_factory, case):
    """The indexer's extraction (decoding on a thread, then extract.extract, as `index`
    runs it) turns any bad file into a reason, never an exception."""
    _, raw = case
    FIGURES["fuzzed_images"] += 1
    p = tmp_path_factory.mktemp("fz") / "f.jpg"
    p.write_bytes(raw)
    with extract.decoding([str(p)], PRE, MAX_MP, workers=0, threads=1) as items:
        batches = list(extract.extract(NET, PRE, items, batch_size=1))
    assert len(batches) == 1 and len(batches[0]) == 1
    got = batches[0][0]
    assert got.path == str(p) and got.digest
    assert (got.vector is None) == bool(got.reason)
    assert "\n" not in got.reason
    if got.vector is not None:  # the network took the crop: it was 3 x 224 x 224
        assert got.vector.shape == (32,) and len(got.thumb) == 32 * 32 * 3
