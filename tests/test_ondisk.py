"""On-disk merge (issue 17): IVF shards merged into inverted lists in a .ivfdata file
(ondisk.merge_on_disk) answer exactly as the in-memory merge (merge.merge_faiss), still
open after their folder moves, hold no codes in memory, and refuse a damaged file."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest

from alexsearch.errors import IndexError_
from alexsearch.index import merge, ondisk, vectors

N, DIM, SHARDS, QUERIES, K = 40_000, 16, 4, 200, 10


def clustered(n, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(500, DIM)).astype(np.float32)
    return centres[rng.integers(0, 500, n)] + 0.3 * rng.normal(size=(n, DIM)).astype(np.float32)


def whitening(x):
    """A search space's transform (spaces.py learns one like it): PCA with whitening."""
    t = faiss.PCAMatrix(DIM, DIM, -0.5)
    t.train(x[:5000])
    return [t]


@pytest.fixture(scope="module", params=["ivfpq", "ivfsq-whitened"])
def shards(request, tmp_path_factory):
    """4 shards of one trained IVF index (the product's kinds at a small dimension: PCA +
    IVF-PQ, or IVF-SQ8 inside the whitened space's transform), each a written index file
    numbering its own catalogue, and the merged catalogue's ids."""
    x = clustered(N, 0)
    kind, _, space = request.param.partition("-")
    transforms = whitening(x) if space else None
    trained = vectors.train_faiss(kind, 2000, x[:10_000], transforms, pq=8)
    ids = np.arange(N, dtype=np.int64) * 3 + 7
    d = tmp_path_factory.mktemp("shards")
    parts = []
    for k, s in enumerate(np.array_split(np.random.default_rng(1).permutation(N), SHARDS)):
        local = np.random.default_rng(k).permutation(len(s)).astype(np.int64) + 100
        index = vectors.build_faiss(kind, local, x[s], trained=trained)
        name = vectors.write_faiss(d, index, k, prefix="shard")
        parts.append((d / name, local, ids[s]))
    return parts, ids, clustered(QUERIES, 1)


def in_memory(parts):
    """merge.merge_faiss over the shards loaded into memory (it clones and resets them,
    which FAISS refuses on memory-mapped lists)."""
    return merge.merge_faiss([(faiss.read_index(str(p)), o, n) for p, o, n in parts])


def search(index, q):
    faiss.extract_index_ivf(index).nprobe = 16
    return index.search(q, K)


def publish(parts, folder: Path, generation=3):
    """What `alexsearch merge --on-disk` writes: vectors-<gen>.ivfdata, then the .faiss."""
    folder.mkdir(parents=True)
    name = f"vectors-{generation}.faiss"
    index = ondisk.merge_on_disk(parts, folder / ondisk.ivfdata_name(name))
    assert vectors.write_faiss(folder, index, generation) == name
    return name


def test_on_disk_merge_answers_exactly_as_the_in_memory_merge(shards, tmp_path):
    parts, ids, q = shards
    # one shard given as an index object (already open), the rest as files to map
    given = [(vectors.read_faiss(parts[0][0].parent, parts[0][0].name), *parts[0][1:])]
    merged = ondisk.merge_on_disk(given + parts[1:], tmp_path / "vectors-1.ivfdata")
    reference = in_memory(parts)
    assert merged.ntotal == reference.ntotal == N
    d_disk, i_disk = search(merged, q)
    d_mem, i_mem = search(reference, q)
    np.testing.assert_array_equal(i_disk, i_mem)
    np.testing.assert_array_equal(d_disk, d_mem)
    assert set(i_disk.ravel().tolist()) <= set(ids.tolist())
    held = faiss.vector_to_array(merge._id_map(merged).id_map)
    assert sorted(held.tolist()) == ids.tolist()
    assert sorted(os.listdir(tmp_path)) == ["vectors-1.ivfdata"]  # no temporary left

    # a merged index merges again (its lists read from its own .ivfdata)
    vectors.write_faiss(tmp_path, merged, 1)
    again = ondisk.merge_on_disk(
        [(tmp_path / "vectors-1.faiss", ids, ids)], tmp_path / "next" / "vectors-2.ivfdata"
    )
    d_again, i_again = search(again, q)
    np.testing.assert_array_equal(i_again, i_mem)
    np.testing.assert_array_equal(d_again, d_mem)


def test_a_moved_folder_still_opens_and_answers(shards, tmp_path, monkeypatch):
    parts, _, q = shards
    name = publish(parts, tmp_path / "a" / "index")
    want = search(vectors.read_faiss(tmp_path / "a" / "index", name), q)
    # the id map (8 bytes a vector) and the trained parts, not the codes
    assert (tmp_path / "a" / "index" / name).stat().st_size < N * 8 + 100_000
    shutil.move(tmp_path / "a", tmp_path / "b")  # the old path is gone
    copied = tmp_path / "c" / "index"
    shutil.copytree(tmp_path / "b" / "index", copied)
    monkeypatch.chdir(tmp_path)  # FAISS alone resolves the stored name from the cwd
    for folder in (tmp_path / "b" / "index", copied):
        got = search(vectors.read_faiss(folder, name), q)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


def mapped_files() -> set[str]:
    with open("/proc/self/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_the_codes_stay_on_disk_memory_mapped(shards, tmp_path):
    parts, _, q = shards
    name = publish(parts, tmp_path / "index")
    ivfdata = tmp_path / "index" / ondisk.ivfdata_name(name)
    codes = ivfdata.stat().st_size - ondisk.TRAILER.size
    code_size = faiss.extract_index_ivf(in_memory(parts[:1])).code_size
    assert codes == N * (code_size + 8)  # every vector's code and id is in the file

    index = vectors.read_faiss(tmp_path / "index", name)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.read_only
    # serialising writes whatever the object holds: lists held in memory would be in it
    held = len(faiss.serialize_index(in_memory(parts)))  # the same index, lists in memory
    assert len(faiss.serialize_index(index)) < held - 0.9 * codes
    assert str(ivfdata) in mapped_files()  # read through the page cache
    search(index, q)
    del index, lists
    assert str(ivfdata) not in mapped_files()


@pytest.mark.parametrize(
    "damage, said",
    [
        (lambda p: os.truncate(p, p.stat().st_size - 1000), "truncated"),
        (lambda p: os.truncate(p, p.stat().st_size // 2), "truncated"),
        (lambda p: _overwrite(p, 0, os.urandom(4096)), "corrupt"),
        (lambda p: _overwrite(p, p.stat().st_size - 48, b"\0" * 8), "does not match"),
        (lambda p: p.unlink(), "missing"),
    ],
    ids=["short-by-1000", "half", "overwritten", "trailer", "deleted"],
)
def test_a_damaged_ivfdata_is_refused_in_one_line(shards, tmp_path, damage, said):
    parts, _, q = shards
    name = publish(parts, tmp_path / "index")
    damage(tmp_path / "index" / ondisk.ivfdata_name(name))
    with pytest.raises(IndexError_) as e:
        vectors.read_faiss(tmp_path / "index", name).search(q, K)
    msg = str(e.value)
    assert said in msg and "ivfdata" in msg and "\n" not in msg, msg


def _overwrite(p: Path, at: int, data: bytes) -> None:
    with open(p, "r+b") as f:
        f.seek(at)
        f.write(data)


def test_a_failed_merge_leaves_nothing_a_reader_could_open(shards, tmp_path, monkeypatch):
    parts, _, _ = shards

    def killed(*a):
        raise KeyboardInterrupt  # stands for a merge interrupted mid-way

    monkeypatch.setattr(ondisk, "_shift_ids", killed)
    with pytest.raises(KeyboardInterrupt):
        ondisk.merge_on_disk(parts, tmp_path / "vectors-1.ivfdata")
    assert os.listdir(tmp_path) == []


def test_shards_trained_apart_or_not_ivf_are_refused(shards, tmp_path):
    parts, _, _ = shards
    x = clustered(8000, 5)
    local = np.arange(len(x), dtype=np.int64)
    apart = vectors.train_faiss("ivfsq", 2000, x)  # its own coarse quantizer and codes
    other = vectors.build_faiss("ivfsq", local, x, trained=apart)
    with pytest.raises(IndexError_, match="trained apart"):
        ondisk.merge_on_disk([parts[0], (other, local, local)], tmp_path / "v.ivfdata")
    flat = vectors.build_faiss("flat", local, x)
    with pytest.raises(IndexError_, match="only IVF"):
        ondisk.merge_on_disk([(flat, local, local)], tmp_path / "v.ivfdata")
    assert os.listdir(tmp_path) == []


def test_a_merge_killed_mid_write_leaves_nothing_and_the_next_one_finishes(shards, tmp_path):
    parts, _, q = shards
    out = tmp_path / "index"
    out.mkdir()
    target = out / "vectors-1.ivfdata"
    # the child stops once its lists are written, before the rename, and is killed there
    child = textwrap.dedent(f"""
        import sys, time, numpy as np
        from pathlib import Path
        from alexsearch.index import ondisk
        shift = ondisk._shift_ids
        def stop(*a):
            shift(*a)
            print("written", flush=True)
            time.sleep(600)
        ondisk._shift_ids = stop
        ids = np.load({str(tmp_path / "ids.npz")!r})
        paths = {[str(p) for p, _, _ in parts]!r}
        parts = [(Path(p), ids[f"o{{k}}"], ids[f"n{{k}}"]) for k, p in enumerate(paths)]
        ondisk.merge_on_disk(parts, Path({str(target)!r}))
    """)
    np.savez(tmp_path / "ids.npz", **{f"{c}{k}": p[i] for k, p in enumerate(parts)
                                      for c, i in (("o", 1), ("n", 2))})  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"written"
        left = os.listdir(out)
        assert len(left) == 1 and left[0].startswith(".vectors-1.ivfdata.")  # hidden temp
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not target.exists()  # nothing under the name a reader opens
    merged = ondisk.merge_on_disk(parts, target)  # again: finishes, tidies the temp
    assert os.listdir(out) == ["vectors-1.ivfdata"]
    np.testing.assert_array_equal(search(merged, q)[1], search(in_memory(parts), q)[1])
