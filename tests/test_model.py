"""The paper's network: size, shapes, towers, LRN, init, and the two execution plans."""

import pytest
import torch
import torch.nn.functional as F

from alexsearch.net.alexnet import (
    AlexNet,
    TwoDeviceAlexNet,
    count_parameters,
    local_response_norm,
)
from alexsearch.net.arch import CAFFE, PAPER, TORCHVISION, ArchConfig, LRNConfig


def test_parameter_count_is_the_papers(paper_model):
    assert count_parameters(paper_model) == 60_965_224


def test_caffe_compatible_parameter_shapes(paper_model):
    shapes = {k: tuple(v.shape) for k, v in paper_model.state_dict().items()}
    assert shapes["conv1.weight"] == (96, 3, 11, 11)
    assert shapes["conv2.weight"] == (256, 48, 5, 5)
    assert shapes["conv3.weight"] == (384, 256, 3, 3)
    assert shapes["conv4.weight"] == (384, 192, 3, 3)
    assert shapes["conv5.weight"] == (256, 192, 3, 3)
    assert shapes["fc6.weight"] == (4096, 9216)
    assert shapes["fc7.weight"] == (4096, 4096)
    assert shapes["fc8.weight"] == (1000, 4096)


def test_spatial_sizes_55_27_13_6(paper_model):
    seen = {}
    hooks = [
        getattr(paper_model, n).register_forward_hook(
            lambda m, i, o, n=n: seen.__setitem__(n, (tuple(i[0].shape[-2:]), o.shape[-1]))
        )
        for n in ("conv1", "conv2", "conv3", "fc6")
    ]
    with torch.no_grad():
        paper_model(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert seen["conv1"][1] == 55
    assert seen["conv2"][0] == (27, 27)
    assert seen["conv3"][0] == (13, 13)
    assert seen["fc6"][1] == 4096 and PAPER.spatial_sizes() == (55, 27, 13, 6)
    assert CAFFE.spatial_sizes() == (55, 27, 13, 6)  # Caffe: 227 input, no padding


def _capture(model, x, perturb_tower0=False):
    out = {}

    def conv1_hook(m, i, o):
        if perturb_tower0:
            o = o.clone()
            o[:, :48] += torch.randn_like(o[:, :48]) * 5
            return o

    hooks = [model.conv1.register_forward_hook(conv1_hook)]
    for n in ("conv2", "conv3"):
        hooks.append(
            getattr(model, n).register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o))
        )
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def test_tower_isolation(paper_model):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 224, 224) * 50
    base = _capture(paper_model, x)
    hit = _capture(paper_model, x, perturb_tower0=True)
    # conv2 of tower 2 (output channels 128..255) sees only tower 2: exactly unchanged
    assert torch.equal(base["conv2"][:, 128:], hit["conv2"][:, 128:])
    assert not torch.equal(base["conv2"][:, :128], hit["conv2"][:, :128])
    # conv3 sees both towers: tower 2's conv3 outputs (192..383) change
    assert (base["conv3"][:, 192:] - hit["conv3"][:, 192:]).abs().max() > 0


def lrn_by_the_formula(a, k, alpha, beta, n, groups):
    """b^i = a^i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} (a^j)^2)^beta per tower."""
    b = torch.empty_like(a)
    c = a.shape[1]
    per = c // groups
    for i in range(c):
        g0 = (i // per) * per
        lo, hi = max(g0, i - n // 2), min(g0 + per - 1, i + n // 2)
        s = sum(a[:, j] ** 2 for j in range(lo, hi + 1))
        b[:, i] = a[:, i] / (k + alpha * s) ** beta
    return b


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_lrn_matches_the_papers_formula(channels_last, grad):
    torch.manual_seed(0)
    a = torch.relu(torch.randn(3, 16, 5, 7, dtype=torch.float64) * 80)
    want = lrn_by_the_formula(a, k=2.0, alpha=1e-4, beta=0.75, n=5, groups=2)
    x = a.contiguous(memory_format=torch.channels_last) if channels_last else a.clone()
    with torch.set_grad_enabled(grad):
        got = local_response_norm(x.requires_grad_(grad), LRNConfig(), groups=2)
    if grad:
        got.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-10)
    # torch's LocalResponseNorm divides alpha by n and defaults k=1: not the paper's
    theirs = torch.nn.LocalResponseNorm(5)(a[:, :8])
    assert not torch.allclose(theirs, want[:, :8])


@pytest.mark.parametrize("channels_last", [False, True])
def test_lrn_of_a_bf16_batch_is_the_formula_in_float32(channels_last):
    """bf16 activations (autocast) are normalised in float32 image by image, in x's layout:
    the paper's formula on the float32 values, rounded once to bf16."""
    torch.manual_seed(0)
    a = torch.relu(torch.randn(4, 16, 5, 7) * 80).to(torch.bfloat16)
    want = lrn_by_the_formula(a.double(), k=2.0, alpha=1e-4, beta=0.75, n=5, groups=2)
    x = a.contiguous(memory_format=torch.channels_last) if channels_last else a
    with torch.inference_mode():
        got = local_response_norm(x, LRNConfig(), groups=2)
    assert got.dtype == torch.bfloat16 and got.stride() == x.stride()
    whole = local_response_norm(x.float(), LRNConfig(), groups=2).to(torch.bfloat16)
    assert torch.equal(got, whole)  # the same float32 arithmetic, whatever the loop
    torch.testing.assert_close(got.double(), want, rtol=2**-8, atol=0)  # one rounding


def test_lrn_general_beta_and_caffe_constants():
    a = torch.relu(torch.randn(2, 12, 4, 4, dtype=torch.float64) * 30)
    cfg = LRNConfig(k=1.0, alpha=1e-3, beta=0.6, alpha_over_size=True, per_tower=False)
    want = lrn_by_the_formula(a, k=1.0, alpha=1e-3 / 5, beta=0.6, n=5, groups=1)
    torch.testing.assert_close(local_response_norm(a, cfg, groups=2), want)
    # Caffe's constants are exactly torch's LocalResponseNorm
    caffe = LRNConfig(k=1.0, alpha_over_size=True, per_tower=False)
    torch.testing.assert_close(
        local_response_norm(a, caffe), torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)(a)
    )


def test_lrn_scope_is_per_tower():
    a = torch.ones(1, 8, 2, 2)
    a[:, 3] = 1000.0  # the last channel of tower 1
    per_tower = local_response_norm(a, LRNConfig(), groups=2)
    across = local_response_norm(a, LRNConfig(per_tower=False), groups=2)
    assert per_tower[0, 4, 0, 0] == pytest.approx(1 / (2 + 1e-4 * 3) ** 0.75)  # untouched
    assert across[0, 4, 0, 0] < per_tower[0, 4, 0, 0] * 0.5  # 1000^2 leaks across


def test_paper_init_statistics(paper_model):
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        w = getattr(paper_model, name).weight.detach()
        b = getattr(paper_model, name).bias.detach()
        assert abs(w.mean().item()) < 5e-4, name
        assert w.std().item() == pytest.approx(0.01, rel=0.03), name
        want = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.all(b == want), name


def test_features_are_fc7_after_relu_and_deterministic(paper_model):
    x = torch.randn(2, 3, 224, 224) * 50
    with torch.no_grad():
        f1, f2 = paper_model.features(x), paper_model.features(x)
        logits = paper_model(x)
    assert f1.shape == (2, 4096) and torch.equal(f1, f2) and (f1 >= 0).all()
    torch.testing.assert_close(paper_model.fc8(f1), logits)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    m = AlexNet(ArchConfig(num_classes=5))
    x = torch.randn(2, 3, 224, 224) * 50
    m.train()
    assert not torch.equal(m.features(x), m.features(x))
    m.eval()
    assert torch.equal(m.features(x), m.features(x))


def test_two_device_plan_equals_one_device_plan(paper_model):
    plan = TwoDeviceAlexNet(paper_model, ["cpu", "cpu"]).eval()
    x = torch.randn(2, 3, 224, 224) * 50
    with torch.no_grad():
        torch.testing.assert_close(plan(x), paper_model(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(plan.features(x), paper_model.features(x), rtol=1e-4, atol=1e-4)
    back = plan.grouped_state_dict()
    for k, v in paper_model.state_dict().items():
        assert torch.equal(back[k], v), k


def test_two_device_plan_trains_on_cpu_cpu():
    torch.manual_seed(0)
    small = ArchConfig(num_classes=3, dropout=0.0)
    m = AlexNet(small)
    plan = TwoDeviceAlexNet(m, ["cpu", "cpu"]).train()
    x, y = torch.randn(2, 3, 224, 224) * 50, torch.tensor([0, 2])
    loss = F.cross_entropy(plan(x), y)
    loss.backward()
    grads = [p.grad for p in plan.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_other_conventions_are_configs_not_forks():
    tv = AlexNet(TORCHVISION, init=False)
    assert count_parameters(tv) == 61_100_840  # torchvision's alexnet
    assert tv.conv2.weight.shape == (192, 64, 5, 5)
    caffe = AlexNet(CAFFE, init=False)
    assert caffe.conv1.padding == (0, 0) and count_parameters(caffe) == 60_965_224
    with torch.no_grad():
        assert caffe.features(torch.randn(1, 3, 227, 227)).shape == (1, 4096)
    assert ArchConfig.from_dict(CAFFE.to_dict()) == CAFFE
    assert ArchConfig.from_dict(TORCHVISION.to_dict()) == TORCHVISION
