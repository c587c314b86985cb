"""fastnorm's layer classes without PyTorch: construction, state, modes, errors, and the
forward pass against fastnorm.reference.  tests/test_layers_torch.py checks them against
torch's own modules.
"""
import copy
import pickle
import types

import ml_dtypes
import numpy as np
import pytest

import fastnorm
from fastnorm import reference

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)

# torch's state_dict keys for each configuration (the contract: PyTorch's names and order).
STATE_KEYS = [
    (lambda: fastnorm.LayerNorm(8), ["weight", "bias"]),
    (lambda: fastnorm.LayerNorm(8, bias=False), ["weight"]),
    (lambda: fastnorm.LayerNorm(8, elementwise_affine=False), []),
    (lambda: fastnorm.RMSNorm(8), ["weight"]),
    (lambda: fastnorm.RMSNorm(8, elementwise_affine=False), []),
    (lambda: fastnorm.BatchNorm1d(8), ["weight", "bias", "running_mean", "running_var",
                                       "num_batches_tracked"]),
    (lambda: fastnorm.BatchNorm2d(8, affine=False), ["running_mean", "running_var",
                                                     "num_batches_tracked"]),
    (lambda: fastnorm.BatchNorm3d(8, track_running_stats=False), ["weight", "bias"]),
    (lambda: fastnorm.GroupNorm(2, 8), ["weight", "bias"]),
    (lambda: fastnorm.GroupNorm(2, 8, affine=False), []),
    (lambda: fastnorm.InstanceNorm2d(8), []),
    (lambda: fastnorm.InstanceNorm1d(8, affine=True, track_running_stats=True),
     ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]),
]


def data(rng, shape, dtype=np.float32):
    return (0.5 + 2.0 * rng.standard_normal(shape)).astype(dtype)


def assert_close(got, want):
    tol = 2e-6 if np.asarray(got).dtype == F32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# ---- construction and state ---------------------------------------------------------


@pytest.mark.parametrize("make, keys", STATE_KEYS)
def test_state_dict_has_torch_keys(make, keys):
    assert list(make().state_dict()) == keys


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_initial_values_are_torchs(dtype):
    ln = fastnorm.LayerNorm((3, 4), dtype=dtype)
    np.testing.assert_array_equal(ln.weight, np.ones((3, 4)))
    np.testing.assert_array_equal(ln.bias, np.zeros((3, 4)))
    assert ln.weight.dtype == dtype and ln.bias.dtype == dtype
    assert fastnorm.RMSNorm(5, dtype=dtype).weight.dtype == dtype
    bn = fastnorm.BatchNorm2d(6, dtype=dtype)
    np.testing.assert_array_equal(bn.weight, np.ones(6))
    np.testing.assert_array_equal(bn.bias, np.zeros(6))
    np.testing.assert_array_equal(bn.running_mean, np.zeros(6))
    np.testing.assert_array_equal(bn.running_var, np.ones(6))
    assert bn.running_mean.dtype == dtype and bn.running_var.dtype == dtype
    assert bn.num_batches_tracked == 0
    tracked = bn.state_dict()["num_batches_tracked"]
    assert tracked.dtype == np.int64 and tracked.shape == ()
    gn = fastnorm.GroupNorm(2, 6, dtype=dtype)
    np.testing.assert_array_equal(gn.weight, np.ones(6))
    np.testing.assert_array_equal(gn.bias, np.zeros(6))


def test_modes_follow_torch():
    for layer in (fastnorm.LayerNorm(4), fastnorm.BatchNorm1d(4), fastnorm.GroupNorm(2, 4),
                  fastnorm.InstanceNorm1d(4)):
        assert layer.training is True  # torch modules start in training mode
        assert layer.eval() is layer and layer.training is False
        assert layer.train() is layer and layer.training is True
        assert layer.train(False) is layer and layer.training is False
        with pytest.raises(ValueError, match="bool"):
            layer.train("no")


def test_instance_norm_defaults_are_torchs():
    layer = fastnorm.InstanceNorm3d(5)
    assert layer.affine is False and layer.track_running_stats is False
    assert layer.weight is None and layer.running_mean is None
    assert layer.momentum == 0.1 and layer.eps == 1e-5


def test_parameters_and_buffers_iterate_the_present_state():
    bn = fastnorm.BatchNorm1d(3)
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in bn.named_buffers()] == ["running_mean", "running_var",
                                                  "num_batches_tracked"]
    assert list(bn.parameters())[0] is bn.weight
    assert list(bn.buffers())[0] is bn.running_mean
    assert list(fastnorm.LayerNorm(3, elementwise_affine=False).parameters()) == []


@pytest.mark.parametrize("make, text", [
    (lambda: fastnorm.LayerNorm(768), "LayerNorm((768,), eps=1e-05, elementwise_affine=True, bias=True)"),
    (lambda: fastnorm.RMSNorm(768), "RMSNorm((768,), eps=None, elementwise_affine=True)"),
    (lambda: fastnorm.BatchNorm2d(64), "BatchNorm2d(64, eps=1e-05, momentum=0.1, affine=True, "
                                       "bias=True, track_running_stats=True)"),
    (lambda: fastnorm.GroupNorm(32, 64), "GroupNorm(32, 64, eps=1e-05, affine=True, bias=True)"),
    (lambda: fastnorm.InstanceNorm2d(64), "InstanceNorm2d(64, eps=1e-05, momentum=0.1, "
                                          "affine=False, bias=False, track_running_stats=False)"),
    (lambda: fastnorm.BatchNorm1d(3, momentum=None, channels_last=True, dtype=np.float64),
     "BatchNorm1d(3, eps=1e-05, momentum=None, affine=True, bias=True, "
     "track_running_stats=True, channels_last=True, dtype=float64)"),
])
def test_repr(make, text):
    assert repr(make()) == text


def test_state_dict_returns_copies():
    bn = fastnorm.BatchNorm1d(3)
    state = bn.state_dict()
    for value in state.values():
        value[...] = 7
    np.testing.assert_array_equal(bn.weight, np.ones(3))
    assert int(bn.num_batches_tracked) == 0
    assert list(bn.state_dict(prefix="bn.")) == ["bn." + k for k in state]


def test_load_state_dict_copies_and_casts(rng):
    bn = fastnorm.BatchNorm1d(4)
    source = {"weight": rng.uniform(0.5, 2, 4), "bias": rng.standard_normal(4),
              "running_mean": [0.0, 1.0, 2.0, 3.0], "running_var": rng.uniform(0.5, 2, 4),
              "num_batches_tracked": 12}
    before = {k: np.array(v, copy=True) for k, v in source.items()}
    result = bn.load_state_dict(source)
    assert result == ([], []) and result.missing_keys == [] and result.unexpected_keys == []
    for name, value in before.items():
        np.testing.assert_array_equal(bn.state_dict()[name], np.asarray(value).astype(
            np.int64 if name == "num_batches_tracked" else np.float32))
    assert bn.weight.dtype == F32 and bn.num_batches_tracked.dtype == np.int64
    source["weight"][...] = 0  # the layer holds no reference to the caller's arrays
    np.testing.assert_array_equal(bn.weight, before["weight"].astype(np.float32))


def test_load_state_dict_strict_errors_name_the_keys():
    layer = fastnorm.LayerNorm(3)
    with pytest.raises(RuntimeError, match='Missing key.*"bias"'):
        layer.load_state_dict({"weight": np.zeros(3)})
    with pytest.raises(RuntimeError, match='Unexpected key.*"scale"'):
        layer.load_state_dict({"weight": np.zeros(3), "bias": np.zeros(3), "scale": np.zeros(3)})
    np.testing.assert_array_equal(layer.weight, np.ones(3))  # nothing written on error
    result = layer.load_state_dict({"weight": np.full(3, 2.0), "scale": 1}, strict=False)
    assert result.missing_keys == ["bias"] and result.unexpected_keys == ["scale"]
    np.testing.assert_array_equal(layer.weight, np.full(3, 2.0))


@pytest.mark.parametrize("bad, message", [
    ({"weight": np.zeros(4)}, "size mismatch"),
    ({"weight": np.zeros((1, 3))}, "size mismatch"),
    ({"weight": np.array(["a", "b", "c"])}, "dtype"),
    ({"weight": None}, "None"),
    ({"num_batches_tracked": np.array(1.5)}, "integer"),
    ({"num_batches_tracked": np.zeros(1, np.int64)}, "size mismatch"),
])
def test_load_state_dict_refuses_bad_values_and_writes_nothing(bad, message):
    bn = fastnorm.BatchNorm1d(3)
    good = {k: v + 1 for k, v in bn.state_dict().items()}
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=message):
            bn.load_state_dict({**good, **bad}, strict=strict)
        for name, value in fastnorm.BatchNorm1d(3).state_dict().items():
            np.testing.assert_array_equal(bn.state_dict()[name], value)


def test_load_state_dict_prefix_selects_one_layer():
    model = {"0.weight": np.full(3, 2.0), "0.bias": np.full(3, -1.0), "1.weight": np.zeros(5)}
    layer = fastnorm.LayerNorm(3)
    layer.load_state_dict(model, prefix="0.")
    np.testing.assert_array_equal(layer.bias, np.full(3, -1.0))
    with pytest.raises(RuntimeError, match='"1.bias"'):
        fastnorm.LayerNorm(5).load_state_dict(model, prefix="1.")
    with pytest.raises(TypeError, match="mapping"):
        layer.load_state_dict([("weight", np.ones(3))])


def test_load_state_dict_accepts_array_likes_and_bfloat16():
    class ArrayLike:
        def __array__(self, dtype=None, copy=None):
            return np.full(3, 4.0)
    layer = fastnorm.LayerNorm(3, dtype=ml_dtypes.bfloat16)
    layer.load_state_dict({"weight": ArrayLike(), "bias": np.full(3, 0.5, ml_dtypes.bfloat16)})
    assert layer.weight.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(layer.weight.astype(np.float32), np.full(3, 4.0))


def test_copy_and_pickle_give_independent_layers(rng):
    bn = fastnorm.BatchNorm2d(3)
    bn(data(rng, (4, 3, 2, 2)))
    for clone in (copy.deepcopy(bn), pickle.loads(pickle.dumps(bn))):
        assert repr(clone) == repr(bn)
        for name, value in bn.state_dict().items():
            np.testing.assert_array_equal(clone.state_dict()[name], value)
        clone(data(rng, (4, 3, 2, 2)))
        assert int(clone.num_batches_tracked) == 2 and int(bn.num_batches_tracked) == 1


@pytest.mark.parametrize("make, error", [
    (lambda: fastnorm.GroupNorm(3, 64), ValueError),
    (lambda: fastnorm.GroupNorm(0, 64), ValueError),
    (lambda: fastnorm.LayerNorm(0), ValueError),
    (lambda: fastnorm.LayerNorm(()), ValueError),
    (lambda: fastnorm.LayerNorm("8"), ValueError),
    (lambda: fastnorm.LayerNorm(8, eps=-1.0), ValueError),
    (lambda: fastnorm.RMSNorm(8, eps=float("nan")), ValueError),
    (lambda: fastnorm.BatchNorm1d(8, momentum=1.5), ValueError),
    (lambda: fastnorm.BatchNorm1d(2.5), ValueError),
    (lambda: fastnorm.LayerNorm(8, dtype=np.int32), TypeError),
    (lambda: fastnorm.BatchNorm2d(8, dtype=np.float16), TypeError),
    (lambda: fastnorm.InstanceNorm2d(8, dtype=ml_dtypes.bfloat16), TypeError),
])
def test_constructor_refuses_bad_arguments(make, error):
    with pytest.raises(error):
        make()


# ---- forward against fastnorm.reference ---------------------------------------------


def randomized(layer, rng):
    """layer with random weight/bias (and running statistics) loaded."""
    state = {}
    for name, value in layer.state_dict().items():
        if name == "num_batches_tracked":
            state[name] = np.int64(3)
        elif name in ("weight", "running_var"):
            state[name] = rng.uniform(0.5, 2.0, value.shape)
        else:
            state[name] = rng.standard_normal(value.shape)
    layer.load_state_dict(state)
    return layer


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_and_rms_norm_forward(dtype, rng):
    ln = randomized(fastnorm.LayerNorm((4, 6), eps=1e-3, dtype=dtype), rng)
    x = data(rng, (3, 4, 6), dtype)
    assert_close(ln(x), reference.layer_norm(x, (4, 6), ln.weight, ln.bias, 1e-3))
    rms = randomized(fastnorm.RMSNorm(6, dtype=dtype), rng)
    assert_close(rms(x), reference.rms_norm(x, 6, rms.weight))
    x_list = x.tolist()  # anything np.asarray takes
    assert_close(rms(x_list), reference.rms_norm(np.asarray(x_list), 6, rms.weight))


def test_row_norm_keyword_arguments_are_forwarded(rng):
    ln = randomized(fastnorm.LayerNorm(16), rng)
    x, r = data(rng, (5, 16)), data(rng, (5, 16))
    out, h = np.empty_like(x), np.empty_like(x)
    assert ln(x, residual=r, residual_out=h, out=out) is out
    np.testing.assert_array_equal(h, x + r)
    np.testing.assert_array_equal(out, ln(x + r))
    y, mean, rstd = ln(x, return_stats=True)
    assert_close(mean, x.astype(np.float64).mean(-1))
    rms = randomized(fastnorm.RMSNorm(16), rng)
    y, rstd = rms(x, return_stats=True)
    np.testing.assert_array_equal(y, rms(x))
    with pytest.raises(TypeError):
        ln(x, momentum=0.1)


def test_layer_norm_checks_the_normalized_shape(rng):
    with pytest.raises(ValueError, match="normalized_shape"):
        fastnorm.LayerNorm(8, elementwise_affine=False)(data(rng, (2, 7)))
    with pytest.raises(ValueError, match="normalized_shape"):
        fastnorm.RMSNorm(8)(data(rng, (8, 2)))


def test_batch_norm_training_updates_like_the_reference(rng):
    bn = randomized(fastnorm.BatchNorm2d(3, momentum=0.3), rng)
    running_mean, running_var = bn.running_mean.copy(), bn.running_var.copy()
    x = data(rng, (4, 3, 5, 2))
    want = reference.batch_norm(x, running_mean, running_var, bn.weight, bn.bias,
                                training=True, momentum=0.3)
    assert_close(bn(x), want)
    assert_close(bn.running_mean, running_mean)
    assert_close(bn.running_var, running_var)
    assert int(bn.num_batches_tracked) == 4
    bn.eval()
    x = data(rng, (2, 3, 5, 2))
    assert_close(bn(x), reference.batch_norm(x, running_mean, running_var, bn.weight, bn.bias))
    assert int(bn.num_batches_tracked) == 4


def test_batch_norm_momentum_none_is_the_cumulative_average(rng):
    """After k batches from a reset, running_mean is the plain mean of the k batch means and
    running_var the mean of the k unbiased batch variances."""
    bn = fastnorm.BatchNorm1d(3, momentum=None, dtype=np.float64)
    batches = [data(rng, (6 + k, 3), np.float64) for k in range(5)]
    for x in batches:
        bn(x)
    assert int(bn.num_batches_tracked) == 5
    assert_close(bn.running_mean, np.mean([x.mean(0) for x in batches], axis=0))
    assert_close(bn.running_var, np.mean([x.var(0, ddof=1) for x in batches], axis=0))


def test_batch_norm_channels_last_equals_channels_first(rng):
    first = randomized(fastnorm.BatchNorm3d(4), rng)
    last = fastnorm.BatchNorm3d(4, channels_last=True)
    last.load_state_dict(first.state_dict())
    for mode in (True, False):
        first.train(mode)
        last.train(mode)
        x = data(rng, (2, 4, 3, 2, 3))
        y_last = last(np.moveaxis(x, 1, -1))
        assert_close(np.moveaxis(y_last, -1, 1), first(x))
        for name, value in first.state_dict().items():
            assert_close(last.state_dict()[name], value)


def test_batch_norm_out_and_return_stats(rng):
    bn = fastnorm.BatchNorm1d(3)
    x = data(rng, (8, 3))
    out = np.empty_like(x)
    y, mean, rstd = bn(x, out=out, return_stats=True)
    assert y is out
    assert_close(mean, x.astype(np.float64).mean(0))
    assert_close(rstd, 1 / np.sqrt(x.astype(np.float64).var(0) + 1e-5))


@pytest.mark.parametrize("cls, good_ranks", [
    (fastnorm.BatchNorm1d, (2, 3)), (fastnorm.BatchNorm2d, (4,)), (fastnorm.BatchNorm3d, (5,)),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_rank_checks(cls, good_ranks, channels_last, rng):
    bn = cls(2, channels_last=channels_last)
    for ndim in range(1, 7):
        shape = [3] * ndim
        if ndim > 1:
            shape[-1 if channels_last else 1] = 2
        x = data(rng, tuple(shape))
        if ndim in good_ranks:
            assert bn(x).shape == x.shape
        else:
            with pytest.raises(ValueError, match=f"{ndim}D input"):
                bn(x)
    assert int(bn.num_batches_tracked) == len(good_ranks)  # refused batches are not counted


def test_batch_norm_refused_batch_changes_nothing(rng):
    bn = randomized(fastnorm.BatchNorm1d(3), rng)
    before = bn.state_dict()
    with pytest.raises(ValueError, match="channels"):
        bn(data(rng, (4, 5)))
    with pytest.raises(ValueError, match="2 values per channel"):
        bn(data(rng, (1, 3)))  # one value per channel: no unbiased variance
    for name, value in before.items():
        np.testing.assert_array_equal(bn.state_dict()[name], value)


def test_batch_norm_without_running_stats_always_uses_the_batch(rng):
    bn = randomized(fastnorm.BatchNorm1d(3, track_running_stats=False), rng)
    x = data(rng, (6, 3))
    want = reference.batch_norm(x, None, None, bn.weight, bn.bias, training=True)
    assert_close(bn(x), want)
    assert_close(bn.eval()(x), want)
    assert bn.running_mean is None and "running_mean" not in bn.state_dict()


@pytest.mark.parametrize("track_running_stats", [True, False])
@pytest.mark.parametrize("cls, shape, channels_last",
                         [(fastnorm.BatchNorm1d, (0, 3), False),
                          (fastnorm.BatchNorm2d, (0, 3, 4, 5), False),
                          (fastnorm.BatchNorm2d, (0, 4, 5, 3), True)])
def test_batch_norm_eval_of_an_empty_batch_is_empty(cls, shape, channels_last,
                                                    track_running_stats, rng):
    # API.md: BatchNorm eval of a zero-size batch returns a zero-size result; torch's layer
    # does so with or without running statistics.  Training on it is refused.
    bn = randomized(cls(3, track_running_stats=track_running_stats,
                        channels_last=channels_last), rng).eval()
    x = np.zeros(shape, np.float32)
    y = bn(x)
    assert y.shape == shape and y.dtype == np.float32
    out = np.empty(shape, np.float32)
    y, mean, rstd = bn(x, out=out, return_stats=True)
    assert y is out and mean.shape == rstd.shape == (3,)
    if track_running_stats:
        np.testing.assert_array_equal(mean, bn.running_mean)
    else:
        assert np.isnan(mean).all() and np.isnan(rstd).all()
    with pytest.raises(ValueError, match="2 values per channel"):
        bn.train()(x)


def test_group_norm_forward(rng):
    gn = randomized(fastnorm.GroupNorm(2, 6, dtype=np.float64), rng)
    x = data(rng, (3, 6, 4, 5), np.float64)
    assert_close(gn(x), reference.group_norm(x, 2, gn.weight, gn.bias))
    with pytest.raises(ValueError, match="6 channels"):
        gn(data(rng, (3, 4, 5), np.float64))
    with pytest.raises(TypeError):
        gn(x, out=np.empty_like(x))  # group_norm has no out=


def test_instance_norm_forward_and_running_stats(rng):
    layer = randomized(fastnorm.InstanceNorm2d(3, affine=True, track_running_stats=True,
                                               dtype=np.float64), rng)
    running_mean, running_var = layer.running_mean.copy(), layer.running_var.copy()
    x = data(rng, (4, 3, 5, 6), np.float64)
    assert_close(layer(x), reference.instance_norm(x, layer.weight, layer.bias))
    # Running statistics: the per-instance ones averaged over the batch, momentum 0.1.
    assert_close(layer.running_mean, 0.9 * running_mean + 0.1 * x.mean(axis=(2, 3)).mean(0))
    assert_close(layer.running_var,
                 0.9 * running_var + 0.1 * x.var(axis=(2, 3), ddof=1).mean(0))
    layer.eval()
    assert_close(layer(x), reference.batch_norm(x, layer.running_mean, layer.running_var,
                                                layer.weight, layer.bias))
    assert_close(layer(x[1]), layer(x)[1])  # unbatched (C, H, W)
    with pytest.raises(ValueError, match="3D .*4D"):
        layer(x[0, 0])
    layer.train()
    with pytest.raises(ValueError, match="more than 1 spatial element"):  # as torch
        layer(x[:, :, :1, :1])


# ---- from_torch without torch -------------------------------------------------------


def test_from_torch_reads_attributes_of_any_look_alike(rng):
    """A stand-in with torch's attribute names (no torch needed)."""
    fake = types.SimpleNamespace(num_groups=2, num_channels=4, eps=1e-3, affine=True,
                                 weight=rng.standard_normal(4), bias=rng.standard_normal(4),
                                 training=False)
    layer = fastnorm.GroupNorm.from_torch(fake)
    assert (layer.num_groups, layer.num_channels, layer.eps, layer.training) == (2, 4, 1e-3, False)
    assert layer.dtype == F64  # the arrays' dtype is kept
    np.testing.assert_array_equal(layer.weight, fake.weight)
    assert layer.weight is not fake.weight
    with pytest.raises(TypeError, match="num_channels"):
        fastnorm.GroupNorm.from_torch(types.SimpleNamespace(num_groups=2))


def test_from_torch_refuses_a_different_norm_class():
    BatchNorm2d = type("BatchNorm2d", (), {})  # looks like torch.nn.BatchNorm2d by name
    with pytest.raises(TypeError, match="BatchNorm2d"):
        fastnorm.LayerNorm.from_torch(BatchNorm2d())


def test_layers_without_per_channel_state_take_any_channel_count(rng):
    # docs/api.md: only per-channel parameters or running statistics fix the channel count,
    # as in torch's layers
    x = data(rng, (2, 5, 3, 3))
    bn = fastnorm.BatchNorm2d(3, affine=False, track_running_stats=False)
    assert_close(bn(x), reference.batch_norm(x, training=True))
    assert_close(fastnorm.InstanceNorm2d(3)(x), reference.instance_norm(x))
    assert_close(fastnorm.GroupNorm(1, 3, affine=False)(x), reference.group_norm(x, 1))
    for layer in (fastnorm.BatchNorm2d(3), fastnorm.InstanceNorm2d(3, affine=True),
                  fastnorm.GroupNorm(1, 3)):
        with pytest.raises(ValueError, match="3 channels"):
            layer(x)
