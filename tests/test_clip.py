"""Gradient norms and clipping (`ferrotrain.utilities.clip`) against torch's own functions,
Lightning's `grad_norm`, and float64 references computed from the same stored values."""

from __future__ import annotations

import math

import pytest
import torch

from ferrotrain.errors import MisconfigurationException, NonFiniteNormError
from ferrotrain.utilities.clip import clip_grad_norm_, clip_grad_value_, grad_norm, total_grad_norm_and_clip

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ORDERS = [2.0, 1.0, math.inf, 3.5]
SIZES = [1, 7, 100, 1000, 4099]


def make_params(dtype=torch.float32, sizes=SIZES, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for n in sizes:
        p = torch.nn.Parameter(torch.zeros(n, dtype=dtype))
        p.grad = (torch.randn(n, generator=gen, dtype=torch.float64) * scale).to(dtype)
        params.append(p)
    return params


def twin(params):
    """Independent copies of the parameters and their gradients (same values, same layout)."""
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        if p.grad is not None:
            q.grad = p.grad.clone(memory_format=torch.preserve_format)
            if not p.grad.is_contiguous():
                q.grad = torch.empty_strided(p.grad.size(), p.grad.stride(), dtype=p.grad.dtype).copy_(p.grad)
        out.append(q)
    return out


def exact_norm(grads, p):
    flat = torch.cat([g.detach().double().flatten() for g in grads])
    return torch.linalg.vector_norm(flat, p).item()


def rel_err(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def ulp_tol(dtype):
    return {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}.get(dtype, 1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm_type", ORDERS)
@pytest.mark.parametrize("clipping", [True, False], ids=["clips", "below-max"])
def test_clip_grad_norm_matches_torch(dtype, norm_type, clipping):
    ours = make_params(dtype)
    theirs = twin(ours)
    before = [p.grad.clone() for p in ours]
    ptrs = [p.grad.data_ptr() for p in ours]
    norm = exact_norm(before, norm_type)
    max_norm = norm / 4 if clipping else norm * 2

    got = clip_grad_norm_(ours, max_norm, norm_type)
    want = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type, foreach=True)

    assert got.shape == () and got.dtype == want.dtype and got.device == want.device
    # The value is the float64 norm rounded once to the result dtype; torch's may be an ulp off.
    own_tol = {torch.float64: 1e-12, torch.float32: 2.0**-23}.get(dtype, ulp_tol(dtype))
    assert rel_err(got.item(), norm) <= own_tol
    assert rel_err(got.item(), want.item()) <= (1e-6 if dtype in (torch.float32, torch.float64) else 2 * ulp_tol(dtype))
    assert [p.grad.data_ptr() for p in ours] == ptrs  # in place
    if not clipping:
        for p, b in zip(ours, before):
            assert torch.equal(p.grad, b) and p.grad.dtype == b.dtype
        return
    coef = max_norm / (norm + 1e-6)
    for p, q, b in zip(ours, theirs, before):
        exact = (b.double() * coef).to(dtype)
        if dtype in (torch.float32, torch.float64):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-12)
            torch.testing.assert_close(p.grad.double(), exact.double(), rtol=1e-6, atol=1e-12)
        else:
            # One rounding from the exact product (coefficient kept in float32), where torch
            # also rounds its coefficient to the 16-bit dtype: both within a few ulps.
            torch.testing.assert_close(p.grad.double(), exact.double(), rtol=ulp_tol(dtype), atol=1e-7)
            torch.testing.assert_close(p.grad.double(), q.grad.double(), rtol=4 * ulp_tol(dtype), atol=1e-6)
    assert exact_norm([p.grad for p in ours], norm_type) <= max_norm * (1 + 4 * ulp_tol(dtype))


def test_none_grads_are_skipped():
    ours = make_params(sizes=[10, 20, 30])
    ours.insert(1, torch.nn.Parameter(torch.ones(5)))  # never got a gradient
    theirs = twin(ours)
    got = clip_grad_norm_(ours, 0.5)
    want = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    assert ours[1].grad is None
    assert rel_err(got.item(), want.item()) <= 1e-6
    for p, q in zip(ours, theirs):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


def test_mixed_dtypes_promote_like_torch():
    ours = []
    for seed, dtype in enumerate(DTYPES):
        ours += make_params(dtype, sizes=[33, 64], seed=seed)
    theirs = twin(ours)
    before = [p.grad.clone() for p in ours]
    norm = exact_norm(before, 2.0)
    got = clip_grad_norm_(ours, 1.0, 2.0)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0, 2.0)
    assert got.dtype == want.dtype == torch.float64
    assert rel_err(got.item(), norm) <= 1e-12
    # torch totals the 16-bit groups' norms rounded to 16 bits, so it is only bf16-accurate.
    assert rel_err(got.item(), want.item()) <= 2 * ulp_tol(torch.bfloat16)
    coef = 1.0 / (norm + 1e-6)
    for p, q, b in zip(ours, theirs, before):
        exact = (b.double() * coef).to(p.dtype).double()
        torch.testing.assert_close(p.grad.double(), exact, rtol=ulp_tol(p.dtype), atol=1e-7)
        torch.testing.assert_close(p.grad.double(), q.grad.double(), rtol=4 * ulp_tol(torch.bfloat16), atol=1e-6)
    half_only = make_params(torch.float16, sizes=[8]) + make_params(torch.bfloat16, sizes=[8])
    assert clip_grad_norm_(half_only, 1e9).dtype == torch.nn.utils.clip_grad_norm_(twin(half_only), 1e9).dtype


@pytest.mark.parametrize("norm_type", ORDERS)
def test_non_contiguous_grads_take_the_torch_path(norm_type):
    ours = make_params(sizes=[50, 60])
    wide = torch.nn.Parameter(torch.zeros(40, 30))
    wide.grad = torch.randn(30, 40).t()  # transposed: not contiguous
    sliced = torch.nn.Parameter(torch.zeros(25))
    sliced.grad = torch.randn(50)[::2]  # strided view
    ours += [wide, sliced]
    theirs = twin(ours)
    assert not ours[2].grad.is_contiguous() and not theirs[3].grad.is_contiguous()
    got = clip_grad_norm_(ours, 1.0, norm_type)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)
    assert got.dtype == want.dtype
    assert rel_err(got.item(), want.item()) <= 1e-6
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)

    only_strided = [wide, sliced]
    before = [p.grad.clone() for p in only_strided]
    norm = clip_grad_norm_(only_strided, 1e9, norm_type)
    assert rel_err(norm.item(), exact_norm(before, norm_type)) <= 1e-6
    assert all(torch.equal(p.grad, b) for p, b in zip(only_strided, before))


def test_grads_viewing_part_of_a_larger_storage_touch_only_their_own_elements():
    # Contiguous views that start inside a bigger buffer: the native path must read where each
    # view starts (its storage offset), and scale nothing around it.
    backing = torch.randn(300, dtype=torch.float64).float()
    untouched = backing.clone()
    a = torch.nn.Parameter(torch.zeros(100))
    a.grad = backing[50:150]
    b = torch.nn.Parameter(torch.zeros(10, 5))
    b.grad = backing[200:250].view(10, 5)
    assert a.grad.is_contiguous() and a.grad.storage_offset() == 50
    ours = [a, b]
    theirs = twin(ours)
    got = clip_grad_norm_(ours, 0.5)
    want = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    assert rel_err(got.item(), want.item()) <= 1e-6
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
    for lo, hi in [(0, 50), (150, 200), (250, 300)]:
        assert torch.equal(backing[lo:hi], untouched[lo:hi])


def test_grads_that_require_grad_and_channels_last_grads_match_torch():
    # A gradient built with create_graph=True requires grad itself; a channels-last gradient is
    # dense but not contiguous, so it stays on torch's path.
    x = torch.nn.Parameter(torch.randn(64))
    (x.grad,) = torch.autograd.grad((x**3).sum(), x, create_graph=True)
    conv = torch.nn.Parameter(torch.zeros(2, 3, 4, 4))
    conv.grad = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    assert x.grad.requires_grad and not conv.grad.is_contiguous()
    ours = [x, conv]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for q, p in zip(theirs, ours):
        q.grad = p.grad.detach().clone(memory_format=torch.preserve_format)
    got = clip_grad_norm_(ours, 1.0)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert rel_err(got.item(), want.item()) <= 1e-6
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad.detach(), q.grad, rtol=1e-6, atol=0)


def test_empty_and_single_tensor_inputs():
    assert torch.equal(clip_grad_norm_([], 1.0), torch.tensor(0.0))
    no_grads = [torch.nn.Parameter(torch.ones(3))]
    assert torch.equal(clip_grad_norm_(no_grads, 1.0), torch.tensor(0.0))
    clip_grad_value_([], 1.0)
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert clip_grad_norm_(p, 1.0).item() == 5.0  # a lone tensor, as torch accepts
    torch.testing.assert_close(p.grad, torch.tensor([3.0, 4.0]) / (5.0 + 1e-6))
    q = torch.nn.Parameter(torch.zeros(2))
    q.grad = torch.tensor([3.0, 4.0])
    assert clip_grad_norm_((x for x in [q]), 10.0).item() == 5.0  # a generator
    assert torch.equal(q.grad, torch.tensor([3.0, 4.0]))


def test_same_parameter_listed_twice_matches_torch():
    ours = make_params(sizes=[10])
    theirs = twin(ours)
    got = clip_grad_norm_(ours + ours, 0.1)
    want = torch.nn.utils.clip_grad_norm_(theirs + theirs, 0.1)
    assert rel_err(got.item(), want.item()) <= 1e-6
    torch.testing.assert_close(ours[0].grad, theirs[0].grad, rtol=1e-6, atol=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("contiguous", [True, False])
def test_error_if_nonfinite(bad, contiguous):
    params = make_params(sizes=[10, 20])
    if contiguous:
        params[1].grad[3] = bad
    else:
        params[1].grad = torch.randn(40)[::2]
        params[1].grad[3] = bad
    before = [p.grad.clone() for p in params]
    with pytest.raises(NonFiniteNormError, match=r"total norm of order 2\.0 .* non-finite") as info:
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    assert isinstance(info.value, RuntimeError)
    for p, b in zip(params, before):
        torch.testing.assert_close(p.grad, b, rtol=0, atol=0, equal_nan=True)  # nothing scaled

    # Without the flag: torch's behaviour, scaling by the NaN/zero coefficient.
    theirs = twin(params)
    got = clip_grad_norm_(params, 1.0)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    torch.testing.assert_close(got, want, equal_nan=True)
    for p, q in zip(params, theirs):
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda ps: clip_grad_norm_(ps, -1.0), "max_norm"),
        (lambda ps: clip_grad_norm_(ps, math.nan), "max_norm"),
        (lambda ps: clip_grad_norm_(ps, 1.0, 0), "norm_type"),
        (lambda ps: clip_grad_norm_(ps, 1.0, -2.0), "norm_type"),
        (lambda ps: clip_grad_norm_(ps, 1.0, "fro"), "norm_type"),
        (lambda ps: clip_grad_value_(ps, -0.5), "clip_value"),
        (lambda ps: grad_norm(torch.nn.Linear(2, 2), 0.0), "norm_type"),
    ],
)
def test_bad_arguments_name_the_parameter(call, name):
    params = make_params(sizes=[4])
    before = params[0].grad.clone()
    with pytest.raises(MisconfigurationException, match=f"`{name}` must be") as info:
        call(params)
    assert isinstance(info.value, ValueError)
    assert torch.equal(params[0].grad, before)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_clip_grad_value_matches_torch_bit_for_bit(dtype):
    ours = make_params(dtype, scale=2.0)
    ours[1].grad[2] = math.nan
    strided = torch.nn.Parameter(torch.zeros(30, dtype=dtype))
    strided.grad = (torch.randn(60) * 3).to(dtype)[::2]
    ours.append(strided)
    theirs = twin(ours)
    clip_grad_value_(ours, 0.1)  # 0.1 is not representable: both round it to the dtype
    torch.nn.utils.clip_grad_value_(theirs, 0.1)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, equal_nan=True)
    assert ours[0].grad.abs().max().item() <= torch.tensor(0.1, dtype=dtype).item()


def test_total_grad_norm_and_clip_returns_the_norm_it_clipped_with():
    ours = make_params()
    theirs = twin(ours)
    got = total_grad_norm_and_clip(ours, 1.0, 2.0)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0, 2.0)
    assert rel_err(got.item(), want.item()) <= 1e-6
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


def _module_with_grads(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3)).to(dtype)
    model(torch.randn(11, 5, dtype=dtype)).square().sum().backward()
    model[2].bias.grad = None  # skipped, as Lightning skips it
    return model


def test_grad_norm_by_hand():
    model = torch.nn.Linear(2, 1)
    model.weight.grad = torch.tensor([[3.0, -4.0]])
    model.bias.grad = torch.tensor([12.0])
    got = grad_norm(model, 2)
    assert list(got) == ["grad_2.0_norm/weight", "grad_2.0_norm/bias", "grad_2.0_norm_total"]
    assert [v.item() for v in got.values()] == [5.0, 12.0, 13.0]
    assert all(v.dtype == torch.float32 and v.shape == () for v in got.values())
    inf = grad_norm(model, "inf", group_separator=".")
    assert {k: v.item() for k, v in inf.items()} == {
        "grad_inf_norm.weight": 4.0,
        "grad_inf_norm.bias": 12.0,
        "grad_inf_norm_total": 12.0,
    }
    assert grad_norm(torch.nn.Linear(2, 1), 2.0) == {}  # no gradients yet


@pytest.mark.parametrize("norm_type", [2, 1.0, "inf", 3.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grad_norm_matches_lightning(norm_type, dtype):
    grads = pytest.importorskip("lightning.pytorch.utilities.grads")
    model = _module_with_grads(dtype)
    got = grad_norm(model, norm_type)
    want = grads.grad_norm(model, norm_type)
    assert list(got) == list(want)
    tol = 2 * ulp_tol(dtype)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        assert rel_err(got[key].item(), want[key].item()) <= tol, key


def test_grad_norm_with_strided_and_mixed_dtype_grads_matches_lightning():
    grads = pytest.importorskip("lightning.pytorch.utilities.grads")
    model = _module_with_grads()
    model[0].weight.grad = model[0].weight.grad.t().contiguous().t()  # same values, transposed memory
    assert not model[0].weight.grad.is_contiguous()
    got, want = grad_norm(model, 2.0), grads.grad_norm(model, 2.0)
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype
        assert rel_err(got[key].item(), want[key].item()) <= 1e-6, key
    mixed = _module_with_grads()
    grad = mixed[0].bias.grad.double()  # Lightning then totals in float64
    mixed[0].bias.grad = None
    mixed[0].bias.data = mixed[0].bias.data.double()
    mixed[0].bias.grad = grad
    got, want = grad_norm(mixed, 2.0), grads.grad_norm(mixed, 2.0)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert rel_err(got[key].item(), want[key].item()) <= 1e-6, key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("norm_type", ORDERS)
def test_cuda_grads_stay_on_device_without_a_sync(norm_type):
    ours = [p.cuda() for p in make_params(sizes=[1000, 3000])]
    for p, q in zip(ours, make_params(sizes=[1000, 3000])):
        p.grad = q.grad.cuda()
    theirs = twin_cuda = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for p, q in zip(ours, twin_cuda):
        q.grad = p.grad.clone()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = clip_grad_norm_(ours, 1.0, norm_type)
        clip_grad_value_(ours, 10.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)
    torch.nn.utils.clip_grad_value_(theirs, 10.0)
    assert got.device == want.device
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_grads_together_match_torch():
    ours = make_params(sizes=[100, 200])
    gpu = torch.nn.Parameter(torch.zeros(300, device="cuda"))
    gpu.grad = torch.randn(300, device="cuda")
    ours = [gpu] + ours
    theirs = twin_all = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for p, q in zip(ours, twin_all):
        q.grad = p.grad.clone()
    got = clip_grad_norm_(ours, 1.0)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert got.device == want.device
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


def test_sparse_grads_take_the_torch_path():
    dense = make_params(sizes=[10])
    sparse = torch.nn.Parameter(torch.zeros(6))
    sparse.grad = torch.tensor([0.0, 3.0, 0.0, 0.0, -4.0, 0.0]).to_sparse()
    norm = clip_grad_norm_(dense + [sparse], 1e9)
    assert rel_err(norm.item(), exact_norm([dense[0].grad, sparse.grad.to_dense()], 2.0)) <= 1e-6
