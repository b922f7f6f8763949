"""The image pipeline: decoding every format and mode, the paper's geometry and statistics."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from alexsearch.data import crops, lighting
from alexsearch.images import decode, folders, geometry
from alexsearch.images.decode import ImageError
from alexsearch.images.preprocess import Preprocess

RED = (200, 30, 40)


def _solid(mode, size=(40, 30)):
    img = Image.new("RGB", size, RED)
    return img.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else img.convert(mode)


@pytest.mark.parametrize(
    "fmt,mode,ext",
    [
        ("JPEG", "RGB", ".jpg"),
        ("JPEG", "L", ".jpeg"),
        ("JPEG", "CMYK", ".jpg"),
        ("PNG", "RGB", ".png"),
        ("PNG", "RGBA", ".png"),
        ("PNG", "LA", ".png"),
        ("PNG", "P", ".png"),
        ("PNG", "1", ".png"),
        ("WEBP", "RGB", ".webp"),
        ("WEBP", "RGBA", ".webp"),
        ("BMP", "RGB", ".bmp"),
        ("GIF", "P", ".gif"),
        ("TIFF", "RGB", ".tif"),
        ("TIFF", "CMYK", ".tiff"),
        ("TIFF", "I;16", ".tif"),
    ],
)
def test_decodes_every_format_and_mode_to_rgb(tmp_path, fmt, mode, ext):
    img = _solid(mode)
    if mode == "I;16":
        img = Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16))
    path = tmp_path / f"x{ext}"
    img.save(path, fmt)
    out = decode.decode(path)
    assert out.mode == "RGB" and out.size == (40, 30)
    px = np.asarray(out)[15, 20].astype(int)
    if mode == "I;16":
        assert abs(px[0] - round(40000 / 65535 * 255)) <= 1 and px[0] == px[1] == px[2]
    elif mode in ("L", "LA", "1"):
        assert px[0] == px[1] == px[2]  # grey, but not black or white unless 1-bit
    else:
        assert abs(px - np.array(RED)).max() <= 12, px


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16)[None, :] * 1000).repeat(8, 0)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    g = np.asarray(decode.decode(tmp_path / "deep.png"))[0, :, 0].astype(int)
    assert g[0] == 0 and abs(g[-1] - round(63000 / 65535 * 255)) <= 1 and (np.diff(g) >= 0).all()


def test_transparency_is_composited_on_white(tmp_path):
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert np.asarray(decode.decode(tmp_path / "clear.png")).min() == 255


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), c).convert("P") for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    px = np.asarray(decode.decode(tmp_path / "a.gif"))[5, 5]
    assert px[0] > 200 and px[2] < 50


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.new("RGB", (60, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = np.asarray(decode.decode(tmp_path / "r.jpg"))
    assert out.shape[:2] == (60, 20)
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # left band now on top


def test_jpeg_draft_never_goes_below_the_target(tmp_path):
    Image.new("RGB", (2000, 1100), RED).save(tmp_path / "big.jpg")
    out = decode.decode(tmp_path / "big.jpg", draft_to=256)
    assert min(out.size) >= 256 and out.size[0] < 2000


def _png_header_only(w, h):
    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    return (
        b"\x89PNG\r\n\x1a\n"
        + ihdr
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "empty file"),
        (b"this is text, not a picture\n", "not a recognised image format"),
        (_png_header_only(100_000, 100_000), "megapixel cap"),
    ],
)
def test_bad_files_raise_one_clear_reason(tmp_path, content, reason):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        decode.decode(p)


def test_truncated_jpeg_is_an_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)).save(
        buf, "JPEG"
    )
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="cannot decode"):
        decode.decode(tmp_path / "t.jpg")


def test_resize_short_side_then_centre():
    img = Image.new("RGB", (512, 300), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 100, 300))  # white left of the centre square (105..)
    x = geometry.resize_centre(img, 256)
    assert x.shape == (256, 256, 3) and x.dtype == np.uint8
    assert x[:, :4].mean() < 10  # the band was cropped away
    tiny = geometry.resize_centre(Image.new("RGB", (32, 32), RED), 256)
    assert tiny.shape == (256, 256, 3) and abs(int(tiny[128, 128, 0]) - RED[0]) <= 1


def test_ten_crop_positions_and_mirrors():
    s, c = 8, 5
    x = torch.arange(s * s).view(1, s, s).expand(3, s, s).clone()
    ten = crops.ten_crop(x, c)
    assert ten.shape == (10, 3, c, c)
    e, m = s - c, (s - c) // 2
    tops_lefts = [(0, 0), (0, e), (e, 0), (e, e), (m, m)]
    for i, (t, lft) in enumerate(tops_lefts):
        assert ten[i, 0, 0, 0] == t * s + lft
        assert torch.equal(ten[i + 5], ten[i].flip(-1))


def test_random_crop_flip_takes_real_crops():
    x = torch.arange(16 * 16).view(1, 1, 16, 16).expand(64, 3, 16, 16).clone()
    out = crops.random_crop_flip(x, 12, torch.Generator().manual_seed(0))
    firsts = {int(out[i, 0, 0, 0]) for i in range(64)}
    assert len(firsts) > 4
    for i in range(64):
        row = out[i, 0, 0]
        assert (row.diff().abs() == 1).all()  # contiguous pixels, forwards or mirrored


def test_pca_statistics_recover_a_known_covariance():
    rng = np.random.default_rng(0)
    cov = np.array([[0.04, 0.02, 0.01], [0.02, 0.03, 0.005], [0.01, 0.005, 0.02]])
    px = rng.multivariate_normal([0.5, 0.4, 0.3], cov, size=(200_000,))
    u8 = torch.from_numpy(np.clip(px * 255, 0, 255).round().astype(np.uint8).T.copy())
    stats = lighting.RunningRGBStats()
    stats.update(u8.view(1, 3, 400, 500))
    np.testing.assert_allclose(stats.covariance().numpy(), cov, atol=1.5e-3)
    val, vec = stats.eig()
    c = stats.covariance().float()
    torch.testing.assert_close(c @ vec, vec * val, atol=1e-5, rtol=1e-4)
    assert (val[:-1] >= val[1:]).all()


def test_pca_lighting_shift_has_the_papers_distribution():
    val = torch.tensor([0.2, 0.05, 0.01])
    vec = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))[0]
    x = torch.zeros(20_000, 3, 1, 1)
    shifted = lighting.pca_lighting(x, val, vec, 0.1, torch.Generator().manual_seed(2))
    s = shifted.view(-1, 3)
    # shift = V diag(alpha * lambda): covariance V diag((0.1 lambda)^2) V^T
    want = vec @ torch.diag((0.1 * val) ** 2) @ vec.T
    torch.testing.assert_close(s.T @ s / len(s), want, atol=2e-5, rtol=0.05)


def test_normalize_mean_image_is_cropped_with_the_image():
    mean = torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 8, 8)
    pre = Preprocess(input_size=4, resize=8, mean=mean.tolist())
    u8 = torch.zeros(3, 4, 4, dtype=torch.uint8)
    out = pre.normalize(u8, offsets=(1, 3))
    torch.testing.assert_close(out, -mean[:, 1:5, 3:7])
    bgr = Preprocess(channel_order="BGR", mean=[1.0, 2.0, 3.0])
    px = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1)
    assert bgr.normalize(px).view(3).tolist() == [29.0, 18.0, 7.0]


def test_labelled_folder(tmp_path):
    for cls, n in (("cat", 2), ("dog", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.new("RGB", (4, 4)).save(tmp_path / cls / f"{i}.PNG")
    classes, samples = folders.labelled_folder(tmp_path)
    assert classes == ["cat", "dog"] and [lab for _, lab in samples] == [0, 0, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        folders.labelled_folder(tmp_path)
    with pytest.raises(ValueError, match="no such folder"):
        folders.labelled_folder(tmp_path / "nope")
