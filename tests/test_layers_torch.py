"""fastnorm's layers against PyTorch's own modules (torch==2.13.0, installed by .ci/run).

Each test builds a torch module with random parameters and buffers, gives fastnorm the
module's state (through load_state_dict or from_torch), runs both on the same random
inputs and compares outputs, running statistics and num_batches_tracked.
"""
import os

import numpy as np
import pytest

import fastnorm

# Skipped without torch, except where FASTNORM_REQUIRE_TORCH=1 (CI) makes a missing torch
# an error, so the comparison with torch cannot silently drop out.
if os.environ.get("FASTNORM_REQUIRE_TORCH") == "1":
    import torch
else:
    torch = pytest.importorskip("torch")
nn = torch.nn

TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True)
def _torch_single_thread():
    # Deterministic torch reductions, and no oversubscription of the shared test machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def assert_close(got, want, dtype):
    """Equal to float32 rounding (a few ulps at the unit-to-5 scale of the outputs) for
    float32; to float64 rounding for float64.  Measured differences are ~2 ulps."""
    tol = 4e-6 if np.dtype(dtype) == np.float32 else 1e-12
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol, atol=tol)


def randomize(module, rng):
    """Random values in every parameter and buffer of module (a fresh torch module would
    make weight == 1, bias == 0 and hide a missed load)."""
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if name == "num_batches_tracked":
                tensor.fill_(int(rng.integers(0, 50)))
            elif name in ("weight", "running_var"):
                tensor.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, tensor.shape)))
            else:
                tensor.copy_(torch.from_numpy(rng.standard_normal(tensor.shape)))
    return module


def data(rng, shape, dtype):
    """Inputs off zero and wider than unit scale, so mean and variance both matter."""
    return (0.5 + 2.0 * rng.standard_normal(shape)).astype(dtype)


def run_torch(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def assert_same_state(layer, module, dtype):
    """Same keys as torch's state_dict, same values (num_batches_tracked exactly)."""
    want = module.state_dict()
    got = layer.state_dict()
    assert list(got) == list(want)
    for key, tensor in want.items():
        if key == "num_batches_tracked":
            assert got[key].dtype == np.int64 and got[key].shape == ()
            assert int(got[key]) == int(tensor)
        else:
            assert_close(got[key], tensor.numpy(), dtype)


# ---- LayerNorm / RMSNorm --------------------------------------------------------------

ROW_CASES = [  # (x shape, normalized_shape)
    ((4, 16), 16),
    ((2, 3, 33), (33,)),
    ((3, 768), 768),
    ((2, 5, 4, 6), (4, 6)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, normalized_shape", ROW_CASES)
@pytest.mark.parametrize("options", [{}, {"bias": False}, {"elementwise_affine": False}])
def test_layer_norm_matches_torch(shape, normalized_shape, options, dtype, isa, rng):
    module = randomize(nn.LayerNorm(normalized_shape, **options, dtype=TORCH_DTYPE[np.dtype(dtype)]), rng)
    layer = fastnorm.LayerNorm(normalized_shape, **options, dtype=dtype)
    layer.load_state_dict(module.state_dict())  # torch tensors straight in
    for _ in range(2):  # fresh inputs, same layer
        x = data(rng, shape, dtype)
        assert_close(layer(x), run_torch(module, x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, normalized_shape", ROW_CASES)
@pytest.mark.parametrize("options", [{}, {"eps": 1e-6}, {"elementwise_affine": False}])
def test_rms_norm_matches_torch(shape, normalized_shape, options, dtype, isa, rng):
    module = randomize(nn.RMSNorm(normalized_shape, **options, dtype=TORCH_DTYPE[np.dtype(dtype)]), rng)
    layer = fastnorm.RMSNorm(normalized_shape, **options, dtype=dtype)
    layer.load_state_dict(module.state_dict())
    x = data(rng, shape, dtype)
    assert_close(layer(x), run_torch(module, x), dtype)


def test_layer_norm_residual_kwarg_matches_torch_on_the_sum(rng):
    module = randomize(nn.LayerNorm(64), rng)
    layer = fastnorm.LayerNorm.from_torch(module)
    x, r = data(rng, (5, 64), np.float32), data(rng, (5, 64), np.float32)
    h = np.empty_like(x)
    y = layer(x, residual=r, residual_out=h)
    np.testing.assert_array_equal(h, x + r)
    assert_close(y, run_torch(module, x + r), np.float32)


# ---- BatchNorm ------------------------------------------------------------------------

BATCH_CASES = [  # (fastnorm class, torch class, input shapes channels-first)
    (fastnorm.BatchNorm1d, nn.BatchNorm1d, [(8, 6), (4, 6, 7)]),
    (fastnorm.BatchNorm2d, nn.BatchNorm2d, [(4, 6, 5, 3)]),
    (fastnorm.BatchNorm3d, nn.BatchNorm3d, [(2, 6, 3, 4, 2)]),
]
BATCH_IDS = ["1d", "2d", "3d"]


def to_channels_last(x):
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nc", "channels_last"])
@pytest.mark.parametrize("momentum", [0.1, None, 0.5])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ours, theirs, shapes", BATCH_CASES, ids=BATCH_IDS)
def test_batch_norm_training_steps_match_torch(ours, theirs, shapes, dtype, momentum,
                                               channels_last, isa, rng):
    """Several training steps (several batch shapes), then evaluation: outputs, running
    statistics and num_batches_tracked equal torch's after every step."""
    module = randomize(theirs(6, momentum=momentum, dtype=TORCH_DTYPE[np.dtype(dtype)]), rng)
    layer = ours(6, momentum=momentum, dtype=dtype, channels_last=channels_last)
    layer.load_state_dict(module.state_dict())
    assert layer.training and module.training
    for step in range(4):
        x = data(rng, shapes[step % len(shapes)], dtype)
        want = run_torch(module, x)
        if channels_last:
            got = np.moveaxis(layer(to_channels_last(x)), -1, 1)
        else:
            got = layer(x)
        assert_close(got, want, dtype)
        assert_same_state(layer, module, dtype)
    module.eval()
    assert layer.eval() is layer
    for shape in shapes:
        x = data(rng, shape, dtype)
        got = np.moveaxis(layer(to_channels_last(x)), -1, 1) if channels_last else layer(x)
        assert_close(got, run_torch(module, x), dtype)
    assert_same_state(layer, module, dtype)  # evaluation leaves the statistics alone


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("ours, theirs, shapes", BATCH_CASES, ids=BATCH_IDS)
def test_batch_norm_without_running_stats_matches_torch(ours, theirs, shapes, affine, rng):
    module = randomize(theirs(6, affine=affine, track_running_stats=False), rng)
    layer = ours(6, affine=affine, track_running_stats=False)
    layer.load_state_dict(module.state_dict())
    assert layer.running_mean is None and layer.running_var is None
    assert layer.num_batches_tracked is None
    for mode in (True, False):  # batch statistics in both modes
        module.train(mode)
        layer.train(mode)
        x = data(rng, shapes[-1], np.float32)
        assert_close(layer(x), run_torch(module, x), np.float32)
        assert list(layer.state_dict()) == list(module.state_dict())


def test_batch_norm_bias_false_matches_torch(rng):
    module = randomize(nn.BatchNorm2d(5, bias=False), rng)
    layer = fastnorm.BatchNorm2d.from_torch(module)
    assert layer.bias is None
    x = data(rng, (3, 5, 4, 4), np.float32)
    assert_close(layer(x), run_torch(module, x), np.float32)
    assert_same_state(layer, module, np.float32)


# ---- GroupNorm / InstanceNorm ---------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups, shape", [(1, (2, 8, 5)), (4, (2, 8, 4, 4)), (8, (3, 8, 6)),
                                           (2, (1, 8, 2, 3, 2)), (32, (2, 64, 3, 3))])
@pytest.mark.parametrize("options", [{}, {"affine": False}, {"bias": False}])
def test_group_norm_matches_torch(groups, shape, options, dtype, isa, rng):
    channels = shape[1]
    module = randomize(nn.GroupNorm(groups, channels, **options,
                                    dtype=TORCH_DTYPE[np.dtype(dtype)]), rng)
    layer = fastnorm.GroupNorm(groups, channels, **options, dtype=dtype)
    layer.load_state_dict(module.state_dict())
    for mode in (True, False):  # GroupNorm ignores the mode
        layer.train(mode)
        module.train(mode)
        x = data(rng, shape, dtype)
        assert_close(layer(x), run_torch(module, x), dtype)


INSTANCE_CASES = [
    (fastnorm.InstanceNorm1d, nn.InstanceNorm1d, (3, 4, 9)),
    (fastnorm.InstanceNorm2d, nn.InstanceNorm2d, (3, 4, 5, 6)),
    (fastnorm.InstanceNorm3d, nn.InstanceNorm3d, (2, 4, 3, 2, 5)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", [{}, {"affine": True}], ids=["default", "affine"])
@pytest.mark.parametrize("ours, theirs, shape", INSTANCE_CASES, ids=BATCH_IDS)
def test_instance_norm_matches_torch(ours, theirs, shape, options, dtype, isa, rng):
    module = randomize(theirs(4, **options, dtype=TORCH_DTYPE[np.dtype(dtype)]), rng)
    layer = ours(4, **options, dtype=dtype)
    layer.load_state_dict(module.state_dict())
    x = data(rng, shape, dtype)
    assert_close(layer(x), run_torch(module, x), dtype)
    assert_close(layer(x[0]), run_torch(module, x[0]), dtype)  # unbatched (C, ...) input


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("ours, theirs, shape", INSTANCE_CASES, ids=BATCH_IDS)
def test_instance_norm_running_stats_match_torch(ours, theirs, shape, momentum, rng):
    """track_running_stats=True: training updates the running statistics with the batch
    average of the per-instance ones (momentum=None: not at all, as torch), eval uses them."""
    module = randomize(theirs(4, momentum=momentum, affine=True, track_running_stats=True), rng)
    layer = ours.from_torch(module)
    for _ in range(3):
        x = data(rng, shape, np.float32)
        assert_close(layer(x), run_torch(module, x), np.float32)
        assert_same_state(layer, module, np.float32)
    module.eval()
    layer.eval()
    x = data(rng, shape, np.float32)
    assert_close(layer(x), run_torch(module, x), np.float32)


# ---- from_torch, state_dict, load_state_dict ------------------------------------------

MODULE_FACTORIES = {  # fastnorm class -> torch module builders
    fastnorm.LayerNorm: [lambda: nn.LayerNorm(12), lambda: nn.LayerNorm((3, 4), eps=1e-3, bias=False),
                         lambda: nn.LayerNorm(7, elementwise_affine=False)],
    fastnorm.RMSNorm: [lambda: nn.RMSNorm(12), lambda: nn.RMSNorm((2, 6), eps=1e-6),
                       lambda: nn.RMSNorm(5, elementwise_affine=False)],
    fastnorm.BatchNorm1d: [lambda: nn.BatchNorm1d(6), lambda: nn.BatchNorm1d(6, momentum=None),
                           lambda: nn.BatchNorm1d(6, affine=False, track_running_stats=False)],
    fastnorm.BatchNorm2d: [lambda: nn.BatchNorm2d(6, eps=1e-3, momentum=0.01),
                           lambda: nn.BatchNorm2d(6, bias=False)],
    fastnorm.BatchNorm3d: [lambda: nn.BatchNorm3d(6, affine=False)],
    fastnorm.GroupNorm: [lambda: nn.GroupNorm(32, 64), lambda: nn.GroupNorm(2, 6, affine=False),
                         lambda: nn.GroupNorm(3, 6, eps=1e-6, bias=False)],
    fastnorm.InstanceNorm1d: [lambda: nn.InstanceNorm1d(6)],
    fastnorm.InstanceNorm2d: [lambda: nn.InstanceNorm2d(6, affine=True, track_running_stats=True)],
    fastnorm.InstanceNorm3d: [lambda: nn.InstanceNorm3d(6, momentum=None, affine=True)],
}
MODULE_CASES = [(cls, make) for cls, makers in MODULE_FACTORIES.items() for make in makers]
MODULE_IDS = [f"{cls.__name__}-{i}" for cls, makers in MODULE_FACTORIES.items()
              for i in range(len(makers))]


@pytest.mark.parametrize("cls, make", MODULE_CASES, ids=MODULE_IDS)
def test_repr_reads_like_torch(cls, make):
    module = make()
    assert repr(cls.from_torch(module)) == repr(module)


@pytest.mark.parametrize("cls, make", MODULE_CASES, ids=MODULE_IDS)
def test_from_torch_round_trip(cls, make, rng):
    """torch -> fastnorm copies every constructor argument, parameter, buffer and the mode;
    fastnorm -> torch (through state_dict) gives back the same values."""
    module = randomize(make(), rng)
    module.train(bool(rng.integers(2)))
    layer = cls.from_torch(module)
    assert type(layer) is cls and layer.training == module.training
    assert layer.dtype == np.float32
    assert_same_state(layer, module, np.float32)
    state = layer.state_dict()
    for name, array in [*layer.named_parameters(), *layer.named_buffers()]:
        assert not np.shares_memory(state[name], array)  # state_dict hands out copies

    fresh = make()
    result = fresh.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    assert not result.missing_keys and not result.unexpected_keys
    for key, tensor in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], tensor), key


def test_from_torch_copies_rather_than_shares(rng):
    module = randomize(nn.BatchNorm2d(4), rng)
    layer = fastnorm.BatchNorm2d.from_torch(module)
    before = layer.state_dict()
    with torch.no_grad():
        for tensor in module.state_dict().values():
            tensor.zero_()
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.parametrize("torch_dtype, want", [(torch.float64, np.float64),
                                               (torch.float16, np.float16)])
def test_from_torch_keeps_the_module_dtype(torch_dtype, want, rng):
    module = randomize(nn.LayerNorm(8, dtype=torch_dtype), rng)
    layer = fastnorm.LayerNorm.from_torch(module)
    assert layer.dtype == want and layer.weight.dtype == want
    np.testing.assert_array_equal(layer.weight, module.weight.detach().numpy())


def test_from_torch_bfloat16_is_exact(rng):
    import ml_dtypes
    module = randomize(nn.RMSNorm(8, dtype=torch.bfloat16), rng)
    layer = fastnorm.RMSNorm.from_torch(module)
    assert layer.weight.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(layer.weight.astype(np.float32),
                                  module.weight.detach().float().numpy())


def test_from_torch_half_batch_norm_falls_back_to_float32(rng):
    module = randomize(nn.BatchNorm1d(4, dtype=torch.float16), rng)
    layer = fastnorm.BatchNorm1d.from_torch(module)
    assert layer.dtype == np.float32
    np.testing.assert_array_equal(layer.running_var, module.running_var.float().numpy())


def test_from_torch_refuses_another_kind_of_norm():
    with pytest.raises(TypeError, match="BatchNorm2d"):
        fastnorm.LayerNorm.from_torch(nn.BatchNorm2d(4))
    with pytest.raises(TypeError, match="BatchNorm1d"):
        fastnorm.BatchNorm2d.from_torch(nn.BatchNorm1d(4))


def test_from_torch_passes_options(rng):
    module = randomize(nn.BatchNorm2d(3), rng)
    layer = fastnorm.BatchNorm2d.from_torch(module, channels_last=True, dtype=np.float64)
    assert layer.channels_last and layer.dtype == np.float64
    x = data(rng, (2, 3, 4, 5), np.float64)
    module.double()
    assert_close(np.moveaxis(layer(to_channels_last(x)), -1, 1), run_torch(module, x), np.float64)


def _incompatible(result):
    return sorted(result.missing_keys), sorted(result.unexpected_keys)


@pytest.mark.parametrize("edit", ["drop_bias", "drop_running_var", "add_extra", "both"])
def test_non_strict_loading_reports_the_keys_torch_reports(edit, rng):
    source = randomize(nn.BatchNorm2d(4), rng).state_dict()
    if edit in ("drop_bias", "both"):
        del source["bias"]
    if edit == "drop_running_var":
        del source["running_var"]
    if edit in ("add_extra", "both"):
        source["extra.weight"] = torch.ones(4)
    module, layer = nn.BatchNorm2d(4), fastnorm.BatchNorm2d(4)
    want = module.load_state_dict(dict(source), strict=False)
    got = layer.load_state_dict(dict(source), strict=False)
    assert _incompatible(got) == _incompatible(want)
    assert got.missing_keys == got[0] and got.unexpected_keys == got[1]
    assert_same_state(layer, module, np.float32)  # the keys present were loaded
    with pytest.raises(RuntimeError) as torch_error:
        nn.BatchNorm2d(4).load_state_dict(dict(source))
    with pytest.raises(RuntimeError) as our_error:
        fastnorm.BatchNorm2d(4).load_state_dict(dict(source))
    for key in want.missing_keys + want.unexpected_keys:  # both name every offending key
        assert f'"{key}"' in str(torch_error.value) and f'"{key}"' in str(our_error.value)


def test_wrong_shape_is_refused_like_torch(rng):
    source = randomize(nn.LayerNorm(6), rng).state_dict()
    for strict in (True, False):
        with pytest.raises(RuntimeError, match="size mismatch"):
            nn.LayerNorm(5).load_state_dict(source, strict=strict)
        layer = fastnorm.LayerNorm(5)
        with pytest.raises(RuntimeError, match="size mismatch"):
            layer.load_state_dict(source, strict=strict)
        np.testing.assert_array_equal(layer.weight, np.ones(5, np.float32))  # nothing written


def test_state_dict_saved_by_torch_loads(tmp_path, rng):
    """A checkpoint written with torch.save and read with torch.load."""
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.BatchNorm1d(16))
    randomize(model[1], rng)
    randomize(model[3], rng)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    checkpoint = torch.load(tmp_path / "model.pt")
    norm = fastnorm.LayerNorm(16)
    norm.load_state_dict(checkpoint, prefix="1.")
    batch = fastnorm.BatchNorm1d(16).eval()
    batch.load_state_dict(checkpoint, prefix="3.")
    model.eval()
    x = data(rng, (5, 8), np.float32)
    with torch.no_grad():
        hidden = model[0](torch.from_numpy(x))
        want1 = model[1](hidden)
        want3 = model[3](model[2](want1))
    assert_close(norm(hidden.numpy()), want1.numpy(), np.float32)
    assert_close(batch(model[2](want1).numpy()), want3.numpy(), np.float32)
    with pytest.raises(RuntimeError, match="Missing key"):
        fastnorm.LayerNorm(16).load_state_dict(checkpoint, prefix="2.")


@pytest.mark.parametrize("make, shape", [
    (lambda lib: lib.BatchNorm1d(4), (5, 4, 3, 2)),        # rank
    (lambda lib: lib.BatchNorm2d(4), (5, 4, 3)),
    (lambda lib: lib.BatchNorm3d(4), (5, 4, 3, 2)),
    (lambda lib: lib.BatchNorm1d(4), (1, 4)),              # one value per channel in training
    (lambda lib: lib.InstanceNorm1d(4), (2, 4, 1)),        # one spatial element
    (lambda lib: lib.InstanceNorm2d(4, affine=True), (2, 3, 5, 5)),  # channel count
    (lambda lib: lib.InstanceNorm3d(4), (4, 3, 2)),        # rank
])
def test_refuses_what_torch_refuses(make, shape, rng):
    x = data(rng, shape, np.float32)
    with pytest.raises(ValueError):
        run_torch(make(nn), x)
    with pytest.raises(ValueError):
        make(fastnorm)(x)
