"""Photos as phones and cameras make them: HEIC (pillow-heif), AVIF (Pillow), RAW (rawpy:
the embedded preview, else a half-size demosaic), each upright, through `alexsearch
index`; a RAW file beside its JPEG is the same photo; a broken one is one reason."""

import io
import json
import os

import numpy as np
import pytest
from helpers import cli
from PIL import Image

from alexsearch.images.decode import ImageError, decode

pillow_heif = pytest.importorskip("pillow_heif")
rawpy = pytest.importorskip("rawpy")
tifffile = pytest.importorskip("tifffile")

RED, BLUE = (230, 20, 20), (20, 20, 230)
UPRIGHT_90_CW = 6  # EXIF orientation: the camera was turned a quarter clockwise


def two_halves(w=400, h=300):
    """Red on the left, blue on the right: which way is up shows in the pixels."""
    img = Image.new("RGB", (w, h), RED)
    img.paste(BLUE, (w // 2, 0, w, h))
    return img


def turned_exif():
    exif = Image.Exif()
    exif[0x0112] = UPRIGHT_90_CW
    return exif.tobytes()


def is_upright_turn(img):
    """The landscape two_halves shown as the camera meant: portrait, red on top."""
    a = np.asarray(img.convert("RGB"), np.int16)
    top, bottom = a[: a.shape[0] // 4].mean((0, 1)), a[-a.shape[0] // 4 :].mean((0, 1))
    return a.shape[0] > a.shape[1] and top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]


DNG_TAGS = [
    (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
    (50708, "s", 0, "alexsearch test", True),  # UniqueCameraModel
    (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
    (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
    (50717, "H", 1, 4095, True),  # WhiteLevel
    (50714, "H", 1, 0, True),  # BlackLevel
    (50721, "f", 9, (1, 0, 0, 0, 1, 0, 0, 0, 1), True),  # ColorMatrix1
    (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
]
ORIENTATION_6 = (274, "H", 1, UPRIGHT_90_CW, True)


def cfa_of(img):
    """The RGGB mosaic a sensor would have recorded of `img` (12-bit)."""
    a = np.asarray(img, np.uint16) * 16
    h, w, _ = a.shape
    yy, xx = np.mgrid[0:h, 0:w]
    g = a[..., 1]
    out = np.where((yy % 2 == 0) & (xx % 2 == 0), a[..., 0], g)
    return np.where((yy % 2 == 1) & (xx % 2 == 1), a[..., 2], out).astype(np.uint16)


def write_dng(path, img, preview=None):
    """A DNG LibRaw opens: the CFA (in a SubIFD when there is an IFD0 JPEG preview, as
    cameras write them), turned a quarter by its Orientation tag."""
    cfa = cfa_of(img)
    if preview is None:
        tifffile.imwrite(path, cfa, photometric=32803, extratags=[*DNG_TAGS, ORIENTATION_6])
        return
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            np.asarray(preview), photometric="rgb", compression="jpeg", subfiletype=1,
            rowsperstrip=preview.height,  # one JPEG, as cameras store it
            subifds=1, extratags=[*DNG_TAGS[:2], ORIENTATION_6],
        )  # fmt: skip
        tw.write(cfa, photometric=32803, extratags=DNG_TAGS[2:], subfiletype=0)


def test_heic_and_avif_decode_upright(tmp_path):
    pillow_heif.register_heif_opener()
    two_halves().save(tmp_path / "p.heic", format="HEIF", exif=turned_exif(), quality=90)
    two_halves().save(tmp_path / "p.avif", format="AVIF", exif=turned_exif(), quality=90)
    for name in ("p.heic", "p.avif"):
        assert is_upright_turn(decode(tmp_path / name)), name
        with open(tmp_path / name, "rb") as f:  # as indexing reads it: bytes, then decode
            assert is_upright_turn(decode(f, name=name)), name
        with open(tmp_path / name, "rb") as f:  # bytes without a name (an upload)
            assert is_upright_turn(decode(io.BytesIO(f.read()))), name


def test_raw_preview_when_big_enough_else_half_size_demosaic(tmp_path):
    write_dng(tmp_path / "mosaic.dng", two_halves(800, 600))
    img = decode(tmp_path / "mosaic.dng")
    assert img.size == (300, 400) and is_upright_turn(img)  # half size, turned by LibRaw
    # a preview at least the network's 256: taken as it is (here all green, to tell it)
    write_dng(tmp_path / "preview.dng", two_halves(800, 600), Image.new("RGB", (640, 480), "green"))
    img = decode(tmp_path / "preview.dng")
    a = np.asarray(img, np.int16).mean((0, 1))
    assert img.size[1] > img.size[0] and a[1] > 100 > max(a[0], a[2])  # the preview, upright
    # too small a preview for the 256 the network needs: demosaic instead
    write_dng(tmp_path / "tiny.dng", two_halves(800, 600), Image.new("RGB", (160, 120), "green"))
    assert is_upright_turn(decode(tmp_path / "tiny.dng"))


def test_index_takes_phone_and_camera_files_and_skips_raw_twins(init_ckpt, tmp_path):
    pillow_heif.register_heif_opener()
    d = tmp_path / "camera"
    d.mkdir()
    two_halves().save(d / "IMG_1.HEIC", format="HEIF", quality=90)
    two_halves().save(d / "IMG_2.avif", format="AVIF", quality=90)
    write_dng(d / "IMG_3.DNG", two_halves(800, 600))
    write_dng(d / "IMG_4.dng", two_halves(800, 600))
    two_halves().save(d / "IMG_4.JPG")  # the camera's developed twin of IMG_4.dng
    (d / "IMG_5.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40)  # broken
    (d / "IMG_6.nef").write_bytes(b"not a raw file at all")
    env = {**os.environ, "ALEXSEARCH_WEIGHTS": str(init_ckpt)}
    s = json.loads(cli("index", d, "--index", tmp_path / "ix", "--json", env=env).stdout)
    failed = {os.path.basename(p): why for p, why in s["failed"]}
    assert s["total_ok"] == 4 and set(failed) == {"IMG_5.heic", "IMG_6.nef"}
    assert "cannot decode RAW" in failed["IMG_6.nef"] and all(
        "\n" not in w for w in failed.values()
    )
    info = json.loads(cli("info", "--index", tmp_path / "ix", "--json", env=env).stdout)
    assert {os.path.basename(f["path"]) for f in info["failures"]} == set(failed)
    q = d / "IMG_4.JPG"  # the twin RAW was left out: its neighbours hold no IMG_4.dng
    res = json.loads(
        cli("query", q, "--index", tmp_path / "ix", "--k", "9", "--json", env=env).stdout
    )
    assert "IMG_4.dng" not in {os.path.basename(h["path"]) for h in res[0]["neighbours"]}


def test_raw_over_the_megapixel_cap_is_refused_before_demosaicing(tmp_path):
    write_dng(tmp_path / "big.dng", two_halves(800, 600))
    with pytest.raises(ImageError, match="megapixel cap"):
        decode(tmp_path / "big.dng", max_megapixels=0.1)


def test_a_damaged_raw_is_one_reason_and_libraw_stays_quiet(tmp_path, capfd):
    write_dng(tmp_path / "ok.dng", two_halves(800, 600))
    raw = (tmp_path / "ok.dng").read_bytes()
    (tmp_path / "cut.dng").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ImageError, match="cannot decode RAW") as e:
        decode(tmp_path / "cut.dng")
    assert "\n" not in str(e.value)
    assert capfd.readouterr().err == ""  # LibRaw's own complaint went nowhere
