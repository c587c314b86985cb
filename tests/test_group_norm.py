"""group_norm and instance_norm against the float64 reference and PyTorch."""
import numpy as np
import pytest

import fastnorm
from fn_testutil import (F32, FULL_DTYPES, assert_close, import_torch, random_data,
                         ref_group_norm)

GROUP_CASES = [
    ((4, 6), 3), ((4, 6), 1), ((4, 6), 6),
    ((2, 6, 5), 2), ((3, 8, 4, 4), 4), ((3, 8, 4, 4), 1), ((3, 8, 4, 4), 8),
    ((2, 4, 3, 3, 3), 2), ((2, 32, 17, 9), 8), ((1, 12, 70), 3), ((2, 3, 1), 3),
    # channels of 48 values and more go a group's rows per kernel call, 64 rows at most
    ((4, 16, 7, 7), 4), ((4, 260, 48), 2), ((8, 12, 47), 3),
    # channels under 48 values, several a group, past rows_short's 256 (AVX2: 200; float64
    # 128 and 80): all groups' statistics, then one column affine
    ((3, 64, 4, 4), 2), ((2, 40, 3, 5), 2),
    # fewer groups than 4 per thread, or groups over 256 KB, take the two-pass path; channels
    # over 16384 values are split into segments there
    ((2, 4, 130, 130), 2),
]


@pytest.mark.parametrize("shape, groups", GROUP_CASES)
@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("with_affine", [False, True])
def test_group_norm_matches_reference(shape, groups, dtype, with_affine, isa, rng, tol):
    x = random_data(rng, shape, dtype, offset=1.5, scale=2.0)
    c = shape[1]
    w = random_data(rng, c, dtype, offset=1.0) if with_affine else None
    b = random_data(rng, c, dtype) if with_affine else None
    y = fastnorm.group_norm(x, groups, w, b, eps=1e-4)
    assert y.shape == x.shape and y.dtype == x.dtype
    want = ref_group_norm(x, groups, w, b, eps=1e-4)
    assert_close(y, want, tol)
    # Independent of the reference: statistics per (sample, group).
    g = x.astype(np.float64).reshape(shape[0], groups, -1)
    normed = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-4))
    normed = normed.reshape(shape)
    if with_affine:
        bshape = (1, c) + (1,) * (len(shape) - 2)
        normed = normed * w.astype(np.float64).reshape(bshape) + b.reshape(bshape)
    assert_close(y, normed, tol)


@pytest.mark.parametrize("dtype", FULL_DTYPES)
@pytest.mark.parametrize("affine", ["weight and bias", "weight", "bias", "none"])
def test_group_norm_groups_one_ahead_equal_each_sample_alone(dtype, affine, isa, tuning, rng,
                                                             tol):
    # Groups of several channels of 48 values or more, at most 4 KB a group (float32
    # 13x13 maps, 3 channels a group), go as rows with per-position weight and bias, each
    # group's normalize pass in one loop with the next group's statistics, a thread's
    # last group alone (api_group_norm.c, fn_group_rows_ahead): close to the reference,
    # and each sample the same bits as that sample alone.
    x = random_data(rng, (10, 96, 13, 13), dtype, offset=1.5, scale=2.0)
    w = random_data(rng, 96, dtype, offset=1.0) if "weight" in affine else None
    b = random_data(rng, 96, dtype) if "bias" in affine else None
    y = fastnorm.group_norm(x, 32, w, b)
    assert_close(y, ref_group_norm(x, 32, w, b), tol)
    for i in (0, 4, 9):
        np.testing.assert_array_equal(fastnorm.group_norm(x[i:i + 1], 32, w, b), y[i:i + 1],
                                      err_msg=f"sample {i}")


@pytest.mark.parametrize("shape", [(2, 3, 10), (3, 8, 4, 4), (2, 4, 3, 3, 3), (1, 5, 70)])
@pytest.mark.parametrize("dtype", FULL_DTYPES)
def test_instance_norm_is_group_norm_with_one_channel_per_group(shape, dtype, isa, rng, tol):
    x = random_data(rng, shape, dtype, offset=-3.0)
    c = shape[1]
    w, b = random_data(rng, c, dtype, offset=1.0), random_data(rng, c, dtype)
    y = fastnorm.instance_norm(x, w, b)
    assert_close(y, ref_group_norm(x, c, w, b), tol)
    assert_close(y, fastnorm.group_norm(x, c, w, b), tol)
    assert_close(fastnorm.instance_norm(x), ref_group_norm(x, c), tol)


@pytest.mark.parametrize("offset", [1e2, 1e4])
@pytest.mark.parametrize("shape, groups", [
    ((4, 32, 16, 16), 8),
    # groups of at most 200 values (AVX-512: 256; AVX2 float64 80) take rows_short, a block
    # of groups at a time: 7x7 maps with one, two or (AVX-512) four channels a group, 13x13
    # maps a group (InstanceNorm: rows_short_channels, AVX2's second instance), 2-D input
    # with 8 channels a group
    ((6, 16, 7, 7), 16), ((6, 16, 7, 7), 8), ((6, 16, 7, 7), 4), ((6, 32, 13, 13), 32),
    ((5, 64), 8),
])
def test_group_norm_float32_shifted_data(offset, shape, groups, isa, rng, tol):
    x = random_data(rng, shape, np.float32, offset=offset)
    c = shape[1]
    w, b = random_data(rng, c, np.float32, offset=1.0), random_data(rng, c, np.float32)
    assert_close(fastnorm.group_norm(x, groups), ref_group_norm(x, groups), tol)
    assert_close(fastnorm.group_norm(x, groups, w, b), ref_group_norm(x, groups, w, b), tol)


def test_group_norm_nan_poisons_only_its_group(isa, rng):
    x = random_data(rng, (2, 6, 5), np.float32)
    clean = fastnorm.group_norm(x, 3)
    x[1, 3, 2] = np.nan  # sample 1, group 1 (channels 2 and 3)
    y = fastnorm.group_norm(x, 3)
    poisoned = np.zeros(x.shape, bool)
    poisoned[1, 2:4] = True
    assert np.isnan(y[poisoned]).all()
    np.testing.assert_array_equal(y[~poisoned], clean[~poisoned])


def test_group_norm_constant_group_gives_bias(isa, rng):
    x = random_data(rng, (2, 4, 9), np.float32)
    x[0, 2:] = 7.3
    b = random_data(rng, 4, np.float32)
    y = fastnorm.group_norm(x, 2, np.ones(4, np.float32), b)
    np.testing.assert_array_equal(y[0, 2:], np.broadcast_to(b[2:, None], (2, 9)))


@pytest.mark.parametrize("groups", [0, 4, 5, -2])
def test_group_norm_bad_group_count_raises(groups, isa):
    x = np.ones((2, 6, 3), np.float32)
    with pytest.raises(ValueError):
        fastnorm.group_norm(x, groups)


def test_group_norm_bad_weight_shape_raises(isa):
    x = np.ones((2, 6, 3), np.float32)
    with pytest.raises(ValueError):
        fastnorm.group_norm(x, 3, np.ones(3, np.float32))
    with pytest.raises(ValueError):
        fastnorm.instance_norm(x, None, np.ones((6, 1), np.float32))


def test_group_norm_zero_size_batch(isa):
    y = fastnorm.group_norm(np.zeros((0, 6, 4), np.float32), 3)
    assert y.shape == (0, 6, 4) and y.dtype == F32


@pytest.mark.parametrize("shape, groups", [((4, 6, 5), 3), ((3, 8, 4, 4), 4), ((2, 6), 2),
                                           ((2, 4, 3, 3, 3), 2)])
def test_group_norm_agrees_with_torch(shape, groups, isa, rng, tol):
    torch = import_torch()
    x = random_data(rng, shape, np.float32, offset=0.5)
    c = shape[1]
    w, b = random_data(rng, c, np.float32, offset=1.0), random_data(rng, c, np.float32)
    want = torch.nn.functional.group_norm(torch.from_numpy(x), groups, torch.from_numpy(w),
                                          torch.from_numpy(b), 1e-5).numpy()
    t = tol[F32]
    np.testing.assert_allclose(fastnorm.group_norm(x, groups, w, b), want,
                               rtol=2 * t.rtol, atol=2 * t.atol)


@pytest.mark.parametrize("shape", [(4, 6, 5), (3, 8, 4, 4), (2, 4, 3, 3, 3)])
def test_instance_norm_agrees_with_torch(shape, isa, rng, tol):
    torch = import_torch()
    x = random_data(rng, shape, np.float32, offset=-0.5)
    c = shape[1]
    w, b = random_data(rng, c, np.float32, offset=1.0), random_data(rng, c, np.float32)
    want = torch.nn.functional.instance_norm(torch.from_numpy(x), weight=torch.from_numpy(w),
                                             bias=torch.from_numpy(b), eps=1e-5).numpy()
    t = tol[F32]
    np.testing.assert_allclose(fastnorm.instance_norm(x, w, b), want,
                               rtol=2 * t.rtol, atol=2 * t.atol)


def test_group_norm_input_untouched(isa, rng):
    x = random_data(rng, (2, 4, 6), np.float32)
    before = x.copy()
    fastnorm.group_norm(x, 2)
    np.testing.assert_array_equal(x, before)
