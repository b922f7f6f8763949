"""`alexsearch duplicates`: planted copies (exact, re-encoded, resized, cropped) are found
in their tiers with the right keep, unrelated photos are not, groups do not chain, and
--move-to / --grid do what they say, through the CLI and the API."""

import json
import os
import shutil

import numpy as np
import pytest
from dup_photos import make_library
from helpers import cli, one_line_error
from PIL import Image

import alexsearch
from alexsearch.index import duplicates as dup


@pytest.fixture(scope="module")
def library(tmp_path_factory, init_ckpt):
    root = tmp_path_factory.mktemp("dups")
    files = make_library(root / "lib")
    alexsearch.build_index(root / "lib", index=root / "ix", weights=init_ckpt, device="cpu",
                           workers=0)  # fmt: skip
    return root, files


def _env(ckpt):
    return {**os.environ, "ALEXSEARCH_WEIGHTS": str(ckpt)}


def _groups(report: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for g in report["groups"]:
        out.setdefault(g["tier"], []).append(g)
    return out


def test_cli_json_finds_each_planted_copy_in_its_tier(library, init_ckpt):
    root, files = library
    r = cli("duplicates", "--index", root / "ix", "--json", env=_env(init_ckpt))
    report = json.loads(r.stdout)
    by = _groups(report)
    original = str(files["originals"][0])
    [exact] = by["exact"]
    assert exact["keep"] == original  # same pixels: the older file stays
    assert {f["path"] for f in exact["files"]} == {original, str(files["copy"][0])}
    [near] = by["near"]
    assert near["keep"] == original  # the most pixels
    members = {f["path"] for f in near["files"]}
    planted = {str(files[t][0]) for t in ("reencode", "resize", "crop")}
    assert members == planted | {original}
    assert near["files"][0]["path"] == original  # the keep first
    rep = near["representative"]
    for f in near["files"]:
        if f["path"] == rep:
            assert f["distance"] == 0 and f["signal"] == "representative"
        else:
            assert f["signal"] in ("fc7", "phash", "fc7+phash") and f["distance"] >= 0
    # the other originals are in no group
    grouped = {f["path"] for g in report["groups"] for f in g["files"]}
    assert not grouped & {str(p) for p in files["originals"][1:]}
    assert report["tiers"] == ["exact", "near"] and report["duplicates"] == 4


def test_api_report_is_what_the_cli_prints(library, init_ckpt):
    root, _ = library
    with alexsearch.open_index(root / "ix") as ix:
        rep = ix.duplicates()
    r = cli("duplicates", "--index", root / "ix", "--json", env=_env(init_ckpt))
    assert rep.to_dict() == json.loads(r.stdout)
    assert all(isinstance(g, dup.Group) for g in rep.groups)


def test_exact_tier_alone_and_the_keep_rule(library):
    root, files = library
    with alexsearch.open_index(root / "ix") as ix:
        exact = ix.duplicates(tier="exact")
        smallest = ix.duplicates(keep="smallest")
    assert [g.tier for g in exact.groups] == ["exact"]
    near = [g for g in smallest.groups if g.tier == "near"]
    assert [g.keep for g in near] == [str(files["resize"][0])]  # the fewest pixels stays


def test_a_zero_threshold_and_similar_tier(library):
    root, files = library
    with alexsearch.open_index(root / "ix") as ix:
        similar = ix.duplicates(tier="similar")
        tight = ix.duplicates(tier="near", threshold=0.0)
    assert similar.tiers == ["exact", "near", "similar"]
    near = {f.path for g in similar.groups if g.tier == "near" for f in g.files}
    assert str(files["crop"][0]) in near  # a looser tier never takes a near copy away
    assert tight.thresholds.near_fc7 == 0.0


def _photos_on_an_arc(degrees, seed):
    """Photos whose fc7 lie at `degrees` on an arc of one plane (the first ones, in that
    order, ids 0...), among 200 unrelated random ones; all hashes 0, file sizes falling."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(200, 64)).astype(np.float32)  # unrelated photos around
    u, w = np.eye(64, dtype=np.float32)[:2]
    arc = np.stack([np.cos(a) * u + np.sin(a) * w for a in np.radians(degrees)]) * 60
    vec = np.concatenate([arc, base])
    n = len(vec)
    return dup.Photos(
        np.arange(n), [f"{i}.jpg" for i in range(n)], vec, np.zeros((n, 8), np.uint8),
        np.zeros(n, bool), [f"d{i}" for i in range(n)], np.arange(n, 0, -1), np.zeros(n),
    )  # fmt: skip


def test_groups_do_not_chain():
    """A - B - C - D on a line: each is close to the next, no two others are close.
    Connected components (what imagededup does) would make one group of all four; here
    a photo joins only when it is close to the group's representative."""
    # neighbours 0.022 apart, the others >= 0.086
    photos = _photos_on_an_arc([0, 12, 24, 36], seed=0)
    unit = dup.centred_unit(photos)
    d = 1 - unit[:4] @ unit[:4].T
    close = d <= 0.05
    assert [list(np.flatnonzero(row)) for row in close] == [[0, 1], [0, 1, 2], [1, 2, 3], [2, 3]]
    t = dup.Thresholds(near_fc7=0.05)
    by_size = dup.keep_order(photos, "largest", lambda r: 0)  # A is the largest file
    groups = dup.find_groups(photos, ["exact", "near"], t, by_size)
    # B (close to two, before C in keep order) represents A, B, C; A, the largest, is kept;
    # D, close only to C, is not pulled in through it
    assert [(g, rep) for _, g, rep in groups] == [([0, 1, 2], 1)]
    with_api_shapes = dup.report(photos, threshold=0.05)
    [g] = with_api_shapes.groups
    assert g.keep == "0.jpg" and g.representative == "1.jpg"
    assert all(m.distance <= 0.05 for m in g.files)  # every member close to the representative


def test_similar_tier_only_when_asked_and_after_near():
    """A photo close to another (near) and a third a little further (similar): the
    default shows only the near pair; --tier similar adds the third in its own tier."""
    # cosine distances 0.010 and 0.134 from the first
    photos = _photos_on_an_arc([0, 8, 30], seed=1)
    # two unrelated-looking vectors with the same pHash: near by pHash alone
    photos.hashes[3:5] = 0b10110011
    photos.has_hash[3:5] = True
    default = dup.report(photos)
    assert [(g.tier, [m.path for m in g.files]) for g in default.groups] == [
        ("near", ["0.jpg", "1.jpg"]),
        ("near", ["3.jpg", "4.jpg"]),
    ]
    both = dup.report(photos, tier="similar", threshold=0.2)
    assert [(g.tier, [m.path for m in g.files]) for g in both.groups] == [
        ("near", ["0.jpg", "1.jpg"]),
        ("near", ["3.jpg", "4.jpg"]),
        ("similar", ["0.jpg", "2.jpg"]),
    ]
    [sim] = [g for g in both.groups if g.tier == "similar"]
    assert sim.files[1].signal == "fc7" and 0.05 < sim.files[1].distance <= 0.2


def test_a_file_changed_since_indexing_is_not_moved(tmp_path, init_ckpt):
    files = make_library(tmp_path / "lib")
    alexsearch.build_index(tmp_path / "lib", index=tmp_path / "ix", weights=init_ckpt,
                           device="cpu", workers=0)  # fmt: skip
    changed = files["resize"][0]
    os.utime(changed, ns=(10**18, 10**18))
    with alexsearch.open_index(tmp_path / "ix") as ix:
        rec = ix.move_duplicates(ix.duplicates(), tmp_path / "aside")
    left = {m.source: m.skipped for m in rec.moves if not m.done}
    assert list(left) == [str(changed)] and "changed since it was indexed" in left[str(changed)]
    assert changed.exists() and rec.moved == 3


def test_move_to_keeps_relative_paths_records_refuses_overwrite(tmp_path, init_ckpt):
    files = make_library(tmp_path / "lib")
    alexsearch.build_index(tmp_path / "lib", index=tmp_path / "ix", weights=init_ckpt,
                           device="cpu", workers=0)  # fmt: skip
    dest = tmp_path / "aside"
    # a file already where one would go: refused before anything moves
    blocker = dest / "lib" / "copies" / "p00_q20.jpg"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"mine")
    r = cli("duplicates", "--index", tmp_path / "ix", "--move-to", dest, check=False,
            env=_env(init_ckpt))  # fmt: skip
    one_line_error(r, "exists", "nothing was moved")
    assert all(p.exists() for ps in files.values() for p in ps)
    assert blocker.read_bytes() == b"mine"
    blocker.unlink()

    r = cli("duplicates", "--index", tmp_path / "ix", "--move-to", dest, "--json",
            env=_env(init_ckpt))  # fmt: skip
    moves = json.loads(r.stdout)["moves"]
    moved = {m["from"]: m["to"] for m in moves["moves"] if m["moved"]}
    planted = [files[t][0] for t in ("copy", "reencode", "resize", "crop")]
    assert moved == {str(p): str(dest / "lib" / "copies" / p.name) for p in planted}
    for src, to in moved.items():
        assert not os.path.exists(src) and os.path.exists(to)
    assert all(p.exists() for p in files["originals"])  # every keep and unrelated photo stays
    record = json.loads(open(moves["record"]).read())
    assert record["moved"] == 4 and {m["from"] for m in record["moves"]} == set(moved)
    # the index sees the moves as deletions on its next run
    summary = alexsearch.build_index(tmp_path / "lib", index=tmp_path / "ix", weights=init_ckpt,
                                     device="cpu", workers=0)  # fmt: skip
    assert summary.deleted == 4
    with alexsearch.open_index(tmp_path / "ix") as ix:
        assert ix.duplicates().groups == []
    r = cli("duplicates", "--index", tmp_path / "ix", "--move-to", tmp_path / "again",
            env=_env(init_ckpt))  # fmt: skip
    assert "nothing to move" in r.stdout and not (tmp_path / "again").exists()


def test_move_to_inside_the_indexed_folder_is_seen_as_moves(tmp_path, init_ckpt):
    make_library(tmp_path / "lib")
    ix_dir = tmp_path / "ix"
    alexsearch.build_index(tmp_path / "lib", index=ix_dir, weights=init_ckpt, device="cpu",
                           workers=0)  # fmt: skip
    with alexsearch.open_index(ix_dir) as ix:
        rec = ix.move_duplicates(ix.duplicates(), tmp_path / "lib" / "aside")
    assert rec.moved == 4
    summary = alexsearch.build_index(tmp_path / "lib", index=ix_dir, weights=init_ckpt,
                                     device="cpu", workers=0)  # fmt: skip
    assert summary.moved == 4 and summary.deleted == 0 and summary.added == 0


def test_grid_draws_a_row_per_group_keep_first(library, init_ckpt, tmp_path):
    root, files = library
    out = tmp_path / "dups.png"
    cli("duplicates", "--index", root / "ix", "--grid", out, env=_env(init_ckpt))
    img = Image.open(out).convert("RGB")
    tile, pad, cap = 128, 6, 34
    assert img.height == pad + 2 * (tile + cap + pad)  # two groups
    assert img.width == pad + 4 * (tile + pad)  # the near group: keep + 3
    # the keep is framed in green at the start of each row
    assert img.getpixel((pad - 2, pad + tile // 2)) == (44, 160, 44)


def test_table_output_and_nothing_found(library, init_ckpt, tmp_path):
    root, files = library
    r = cli("duplicates", "--index", root / "ix", env=_env(init_ckpt))
    rows = [ln.split("\t") for ln in r.stdout.splitlines() if not ln.startswith("#")]
    assert {(row[1], row[2], row[6]) for row in rows} >= {
        ("exact", "keep", str(files["originals"][0])),
        ("near", "dup", str(files["crop"][0])),
    }
    lone = tmp_path / "lone"
    shutil.copytree(root / "lib" / "originals", lone)
    alexsearch.build_index(lone, index=tmp_path / "ix2", weights=init_ckpt, device="cpu",
                           workers=0)  # fmt: skip
    r = cli("duplicates", "--index", tmp_path / "ix2", env=_env(init_ckpt))
    assert r.stdout.startswith("no duplicates among")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--tier", "burst"], "--tier 'burst'"),
        (["--keep", "prettiest"], "--keep 'prettiest'"),
        (["--threshold", "3"], "--threshold 3"),
        (["--tier", "exact", "--threshold", "0.1"], "no meaning for --tier exact"),
    ],
)
def test_bad_options_are_one_line(library, init_ckpt, args, fragment):
    root, _ = library
    r = cli("duplicates", "--index", root / "ix", *args, check=False, env=_env(init_ckpt))
    one_line_error(r, fragment)


def test_no_index_is_one_line(tmp_path):
    r = cli("duplicates", "--index", tmp_path / "nothing", check=False)
    one_line_error(r, "nothing")
