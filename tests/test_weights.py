"""Checkpoints: round trip, refusal of misfits, no pickled code ever runs."""

import os
import pickle

import pytest
import torch

from alexsearch.atomic import WriteError
from alexsearch.errors import WeightsError
from alexsearch.net.arch import ArchConfig
from alexsearch.weights import checkpoint


def test_round_trip_keeps_everything(tmp_path):
    ck = checkpoint.init_checkpoint(7, seed=3, classes=[f"c{i}" for i in range(7)])
    fp = checkpoint.save(ck, tmp_path / "a.ckpt")
    back = checkpoint.load(tmp_path / "a.ckpt")
    assert back.arch == ck.arch and back.preprocess == ck.preprocess
    assert back.classes == ck.classes and back.fingerprint == fp
    assert fp == checkpoint.fingerprint(back.state_dict)
    for k, v in ck.state_dict.items():
        assert torch.equal(back.state_dict[k], v)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert back.build()(x).shape == (1, 7)


def test_built_network_shares_the_file_map_and_never_writes_it(tmp_path):
    """read() maps the file copy-on-write: build() takes its arrays without a copy, and a
    write to the network's weights stays in the process, never in the file."""
    path = tmp_path / "a.ckpt"
    fp = checkpoint.save(checkpoint.init_checkpoint(5, seed=2), path)
    on_disk = path.read_bytes()
    ck = checkpoint.read(path)
    model = ck.build()
    w = model.state_dict()["fc6.weight"]
    assert w.data_ptr() == ck.state_dict["fc6.weight"].ctypes.data  # shared, not copied
    with torch.no_grad():
        w.add_(1.0)
    assert path.read_bytes() == on_disk
    assert checkpoint.read(path).fingerprint == fp


def test_fingerprint_changes_with_any_weight(tmp_path):
    ck = checkpoint.init_checkpoint(3)
    a = checkpoint.fingerprint(ck.state_dict)
    ck.state_dict["fc8.bias"][0] += 1e-3
    assert checkpoint.fingerprint(ck.state_dict) != a


def test_tensors_that_do_not_fit_the_config_are_refused(tmp_path):
    ck = checkpoint.init_checkpoint(3)
    ck.arch = ArchConfig(num_classes=5)  # fc8 holds 3 rows
    checkpoint.save(ck, tmp_path / "bad.ckpt")
    with pytest.raises(WeightsError, match=r"fc8.weight has shape 3x4096 .* needs 5x4096"):
        checkpoint.load(tmp_path / "bad.ckpt")


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": checkpoint.FORMAT, "x": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(WeightsError, match="never runs pickled code"):
        checkpoint.load(tmp_path / "evil.ckpt")
    assert not marker.exists()
    # a plain pickle (not a torch zip) is refused before unpickling
    (tmp_path / "p.ckpt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(WeightsError, match="not a checkpoint"):
        checkpoint.load(tmp_path / "p.ckpt")
    assert not marker.exists()


@pytest.mark.parametrize("cut", [0.0, 0.3, 0.99])
def test_truncated_checkpoint_is_refused(tmp_path, cut):
    checkpoint.save(checkpoint.init_checkpoint(2), tmp_path / "ok.ckpt")
    raw = (tmp_path / "ok.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(WeightsError):
        checkpoint.load(tmp_path / "cut.ckpt")


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "keep.ckpt"
    checkpoint.save(checkpoint.init_checkpoint(2, seed=1), path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(WriteError, match="no space left on device"):
        checkpoint.save(checkpoint.init_checkpoint(2, seed=2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.ckpt"]  # no temp file left


def test_torchvision_state_dict_gets_a_hint(tmp_path):
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "tv.pth")
    with pytest.raises(WeightsError, match="weights import"):
        checkpoint.load(tmp_path / "tv.pth")
