"""Backward functions against finite differences of the float64 reference and torch autograd."""
import numpy as np
import pytest

import fastnorm
from fastnorm import reference
from fn_testutil import F32, import_torch, random_data

# float64 gradients: analytic formulas in float64 agree to ~1e-13; central differences
# with h = 1e-6 are accurate to ~1e-9 relative on these unit-scale problems.
FD_RTOL, FD_ATOL = 1e-6, 1e-7
AUTOGRAD_RTOL, AUTOGRAD_ATOL = 1e-10, 1e-12


def _finite_difference(loss, x, h=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        grad[idx] = (loss(xp) - loss(xm)) / (2 * h)
    return grad


def _ln_case(rng, shape, norm_ndim, with_weight):
    x = random_data(rng, shape, np.float64, offset=0.5)
    w = random_data(rng, shape[-norm_ndim:], np.float64, offset=1.0) if with_weight else None
    b = random_data(rng, shape[-norm_ndim:], np.float64) if with_weight else None
    g = random_data(rng, shape, np.float64)
    return x, w, b, g


@pytest.mark.parametrize("shape, norm_ndim", [((3, 5), 1), ((2, 3, 4), 2), ((4, 1), 1),
                                              ((2, 17), 1)])
@pytest.mark.parametrize("with_weight", [False, True])
def test_layer_norm_backward_finite_differences(shape, norm_ndim, with_weight, isa, rng):
    x, w, b, g = _ln_case(rng, shape, norm_ndim, with_weight)
    ns = shape[-norm_ndim:]
    _, mean, rstd = fastnorm.layer_norm(x, ns, w, b, return_stats=True)
    grad_x, grad_w, grad_b = fastnorm.layer_norm_backward(g, x, mean, rstd, w)
    assert grad_x.shape == x.shape and grad_x.dtype == x.dtype
    num_x = _finite_difference(lambda v: np.sum(g * reference.layer_norm(v, ns, w, b)), x)
    np.testing.assert_allclose(grad_x, num_x, rtol=FD_RTOL, atol=FD_ATOL)
    if with_weight:
        num_w = _finite_difference(lambda v: np.sum(g * reference.layer_norm(x, ns, v, b)), w)
        num_b = _finite_difference(lambda v: np.sum(g * reference.layer_norm(x, ns, w, v)), b)
        np.testing.assert_allclose(grad_w, num_w, rtol=FD_RTOL, atol=FD_ATOL)
        np.testing.assert_allclose(grad_b, num_b, rtol=FD_RTOL, atol=FD_ATOL)
    else:
        assert grad_w is None
        # grad_bias is not asked for without weight; if given it must be right.
        if grad_b is not None:
            np.testing.assert_allclose(grad_b, g.reshape(-1, *ns).sum(0), rtol=1e-12)


@pytest.mark.parametrize("shape, norm_ndim", [((3, 5), 1), ((2, 3, 4), 2), ((2, 17), 1)])
@pytest.mark.parametrize("with_weight", [False, True])
def test_rms_norm_backward_finite_differences(shape, norm_ndim, with_weight, isa, rng):
    x, w, _, g = _ln_case(rng, shape, norm_ndim, with_weight)
    ns = shape[-norm_ndim:]
    _, rstd = fastnorm.rms_norm(x, ns, w, return_stats=True)
    grad_x, grad_w = fastnorm.rms_norm_backward(g, x, rstd, w)
    eps = float(np.finfo(np.float64).eps)
    num_x = _finite_difference(lambda v: np.sum(g * reference.rms_norm(v, ns, w, eps)), x)
    np.testing.assert_allclose(grad_x, num_x, rtol=FD_RTOL, atol=FD_ATOL)
    if with_weight:
        num_w = _finite_difference(lambda v: np.sum(g * reference.rms_norm(x, ns, v, eps)), w)
        np.testing.assert_allclose(grad_w, num_w, rtol=FD_RTOL, atol=FD_ATOL)
    else:
        assert grad_w is None


@pytest.mark.parametrize("shape, axis", [((6, 3), 1), ((4, 3, 5), 1), ((3, 4, 2, 3), -1)])
@pytest.mark.parametrize("with_weight", [False, True])
def test_batch_norm_backward_finite_differences(shape, axis, with_weight, isa, rng):
    x = random_data(rng, shape, np.float64, offset=1.0)
    c = shape[axis]
    w = random_data(rng, c, np.float64, offset=1.0) if with_weight else None
    b = random_data(rng, c, np.float64) if with_weight else None
    g = random_data(rng, shape, np.float64)
    _, mean, rstd = fastnorm.batch_norm(x, None, None, w, b, training=True, axis=axis,
                                        return_stats=True)
    grad_x, grad_w, grad_b = fastnorm.batch_norm_backward(g, x, mean, rstd, w, axis=axis)

    def loss(v, weight=w, bias=b):
        return np.sum(g * reference.batch_norm(v, None, None, weight, bias, training=True,
                                               axis=axis))

    np.testing.assert_allclose(grad_x, _finite_difference(loss, x), rtol=FD_RTOL, atol=FD_ATOL)
    if with_weight:
        np.testing.assert_allclose(grad_w, _finite_difference(lambda v: loss(x, weight=v), w),
                                   rtol=FD_RTOL, atol=FD_ATOL)
        np.testing.assert_allclose(grad_b, _finite_difference(lambda v: loss(x, bias=v), b),
                                   rtol=FD_RTOL, atol=FD_ATOL)
    else:
        assert grad_w is None


# ------------------------------------------------------------------ torch autograd ---


def _torch_grads(torch, fn, x, params, g):
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tp = [None if p is None else torch.from_numpy(p.copy()).requires_grad_(True)
          for p in params]
    (fn(tx, *tp) * torch.from_numpy(g)).sum().backward()
    return [tx.grad.numpy()] + [None if p is None else p.grad.numpy() for p in tp]


@pytest.mark.parametrize("shape", [(8, 64), (3, 4, 33), (2, 1000)])
def test_layer_norm_backward_vs_torch(shape, isa, rng):
    torch = import_torch()
    x, w, b, g = _ln_case(rng, shape, 1, True)
    n = shape[-1]
    _, mean, rstd = fastnorm.layer_norm(x, None, w, b, return_stats=True)
    got = fastnorm.layer_norm_backward(g, x, mean, rstd, w)
    want = _torch_grads(torch, lambda t, tw, tb: torch.nn.functional.layer_norm(
        t, (n,), tw, tb, 1e-5), x, [w, b], g)
    for got_i, want_i in zip(got, want):
        np.testing.assert_allclose(got_i, want_i, rtol=AUTOGRAD_RTOL, atol=AUTOGRAD_ATOL)


@pytest.mark.parametrize("shape", [(8, 64), (3, 4, 33), (2, 1000)])
def test_rms_norm_backward_vs_torch(shape, isa, rng):
    torch = import_torch()
    x, w, _, g = _ln_case(rng, shape, 1, True)
    n = shape[-1]
    _, rstd = fastnorm.rms_norm(x, None, w, return_stats=True)
    got = fastnorm.rms_norm_backward(g, x, rstd, w)
    want = _torch_grads(torch, lambda t, tw: torch.nn.functional.rms_norm(t, (n,), tw), x,
                        [w], g)
    for got_i, want_i in zip(got, want):
        np.testing.assert_allclose(got_i, want_i, rtol=AUTOGRAD_RTOL, atol=AUTOGRAD_ATOL)


@pytest.mark.parametrize("shape, axis", [((16, 5), 1), ((4, 6, 3, 3), 1), ((4, 3, 3, 6), -1)])
def test_batch_norm_backward_vs_torch(shape, axis, isa, rng):
    torch = import_torch()
    x = random_data(rng, shape, np.float64, offset=2.0)
    c = shape[axis]
    w, b = random_data(rng, c, np.float64, offset=1.0), random_data(rng, c, np.float64)
    g = random_data(rng, shape, np.float64)
    _, mean, rstd = fastnorm.batch_norm(x, None, None, w, b, training=True, axis=axis,
                                        return_stats=True)
    got = fastnorm.batch_norm_backward(g, x, mean, rstd, w, axis=axis)

    def torch_bn(t, tw, tb):
        t = t if axis == 1 else t.movedim(axis, 1)
        y = torch.nn.functional.batch_norm(t, None, None, tw, tb, training=True, eps=1e-5)
        return y if axis == 1 else y.movedim(1, axis)

    want = _torch_grads(torch, torch_bn, x, [w, b], g)
    for got_i, want_i in zip(got, want):
        np.testing.assert_allclose(got_i, want_i, rtol=AUTOGRAD_RTOL, atol=AUTOGRAD_ATOL)


def test_float32_backward_matches_reference(isa, rng):
    x = random_data(rng, (6, 40), np.float32)
    w = random_data(rng, 40, np.float32, offset=1.0)
    g = random_data(rng, (6, 40), np.float32)
    _, mean, rstd = fastnorm.layer_norm(x, None, w, return_stats=True)
    got = fastnorm.layer_norm_backward(g, x, mean, rstd, w)
    want = reference.layer_norm_backward(g, x, mean, rstd, w)
    assert got[0].dtype == F32
    for got_i, want_i in zip(got, want):
        np.testing.assert_allclose(got_i, want_i, rtol=1e-5, atol=1e-5)
