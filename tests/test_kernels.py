"""The compiled SparseLinear kernels: exact products against dense references, backend choice, fallback."""

import logging
import os
import shutil
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from sparsetrain.sparse import kernels

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                    reason="no C++ compiler on this machine")


def _csr(mask, values, index_dtype):
    rows, cols = mask.nonzero(as_tuple=True)
    crow = torch.zeros(mask.shape[0] + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(mask.sum(1), 0)
    return crow.to(index_dtype), cols.to(index_dtype), values


@pytest.fixture
def restore_backend():
    saved = dict(kernels._state)
    yield
    kernels._state.update(saved)


@needs_compiler
def test_the_kernels_build_on_a_machine_with_a_compiler():
    # CI has a compiler: a build failure must show up as a failure, not as a silent fallback
    assert kernels.native_available(), kernels.native_error()


@needs_compiler
def test_a_lock_left_by_a_killed_load_does_not_hang_the_next_process():
    # torch's cpp_extension waits forever on the `lock` file of a process killed while loading the
    # kernels (a Ctrl-C at start-up): the next process must remove it and load
    import subprocess
    import sys
    from pathlib import Path

    assert kernels.native_available(), kernels.native_error()  # built (cached) before timing anything
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    lock = (Path(root) / f"py{sys.version_info.major}{sys.version_info.minor}_cpu"
            / f"sparsetrain_kernels_{kernels.build_key()}" / "lock")
    lock.touch()
    try:
        code = "from sparsetrain.sparse import kernels; print(kernels.native_available(), kernels.native_error())"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    finally:
        lock.unlink(missing_ok=True)
    assert out.stdout.split() == ["True", "None"], out.stdout + out.stderr
    assert "left by a process that stopped" in out.stderr


def test_the_build_lock_removes_only_stale_torch_locks(tmp_path, monkeypatch, caplog):
    (tmp_path / "lock").touch()
    with caplog.at_level(logging.WARNING, logger=kernels.__name__), kernels._build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()  # holding the OS lock: any torch lock is a dead process's
    assert "stale" not in caplog.text and "left by a process" in caplog.text
    # without flock (Windows) a fresh lock may be another process building: only an old one goes
    import builtins

    real_import = builtins.__import__

    def no_fcntl(name, *args, **kwargs):
        if name == "fcntl":
            raise ImportError("no fcntl")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fcntl)
    (tmp_path / "lock").touch()
    with kernels._build_lock(tmp_path):
        assert (tmp_path / "lock").exists()
    old = time.time() - 3600
    os.utime(tmp_path / "lock", (old, old))
    with kernels._build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()


def _isas():
    return kernels.isas() if (shutil.which("c++") or shutil.which("g++")) and kernels.native_available() else []


@pytest.fixture
def on_isa(request):
    kernels.set_isa(request.param)
    yield request.param
    kernels.set_isa("best")


@needs_compiler
def test_the_widest_instruction_set_is_chosen_and_others_can_be_forced():
    names = kernels.isas()
    assert names[0] == "generic" and kernels.isa() == names[-1]
    assert set(names) <= {"generic", "avx2", "avx512"}
    with pytest.raises(ValueError, match="not available on this CPU"):
        kernels.set_isa("avx1024")
    info = kernels.describe()
    assert info["isa"] == names[-1] and "-march=native" not in info["flags"] and info["cpu"]


@needs_compiler
@pytest.mark.parametrize("on_isa", _isas(), indirect=True)  # every path this CPU can run
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=hs.integers(1, 40), k=hs.integers(1, 50), batch=hs.integers(0, 70), density=hs.floats(0.0, 1.0),
       seed=hs.integers(0, 2**16), int64=hs.booleans())
def test_spmm_and_sddmm_equal_dense_products(on_isa, rows, k, batch, density, seed, int64):
    assert kernels.native_available() and kernels.isa() == on_isa
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, k, generator=g) < density  # empty rows, empty matrices included
    w = torch.randn(rows, k, generator=g) * mask
    crow, col, vals = _csr(mask, w[mask], torch.int64 if int64 else torch.int32)
    xt = torch.randn(k, batch, generator=g)
    torch.testing.assert_close(kernels.spmm(crow, col, vals, xt, rows), w @ xt, atol=1e-5, rtol=1e-5)
    bias = torch.randn(rows, generator=g)
    torch.testing.assert_close(kernels.spmm(crow, col, vals, xt, rows, bias=bias), w @ xt + bias[:, None],
                               atol=1e-5, rtol=1e-5)
    # the activation as the layer holds it: x (B x K) contiguous, passed as its transposed view and
    # packed without a copy; and a strided view (copied once)
    x = xt.t().contiguous()
    torch.testing.assert_close(kernels.spmm(crow, col, vals, x.t(), rows, bias=bias), w @ xt + bias[:, None],
                               atol=1e-5, rtol=1e-5)
    wide = torch.randn(k, 2 * batch + 1, generator=g)
    torch.testing.assert_close(kernels.spmm(crow, col, vals, wide[:, ::2], rows), w @ wide[:, ::2],
                               atol=1e-5, rtol=1e-5)
    gyt = torch.randn(rows, batch, generator=g)
    want = (gyt @ xt.t())[mask]
    torch.testing.assert_close(kernels.sddmm(crow, col, gyt, xt), want, atol=1e-5, rtol=1e-5)
    # both operands as transposed views (as the backward pass gets them), and pre-packed
    gy = gyt.t().contiguous()
    torch.testing.assert_close(kernels.sddmm(crow, col, gy.t(), x.t()), want, atol=1e-5, rtol=1e-5)
    gp, xp = kernels.pack(gy.t()), kernels.pack(x.t())
    torch.testing.assert_close(kernels.sddmm_packed(crow, col, gp, xp, batch), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kernels.spmm_packed(crow, col, vals, xp, batch, rows), w @ xt, atol=1e-5, rtol=1e-5)
    # written row-major (batch x rows, as nn.Linear returns), bias included
    y = kernels.spmm_packed(crow, col, vals, xp, batch, rows, bias=bias, row_major=True)
    assert y.shape == (batch, rows) and y.is_contiguous()
    torch.testing.assert_close(y, (w @ xt + bias[:, None]).t(), atol=1e-5, rtol=1e-5)
    # the transposed product through a permutation of the values (the input gradient)
    tmask = mask.t().contiguous()
    key = torch.arange(rows * k).view(rows, k)[mask]          # row-major position of each value
    tkey = torch.arange(rows * k).view(rows, k).t()[tmask]    # the same positions, column-major
    perm = torch.searchsorted(key, tkey)
    tcrow, tcol, _ = _csr(tmask, None, crow.dtype)
    gxt = kernels.spmm(tcrow, tcol, vals, gyt, k, perm=perm.to(crow.dtype))
    torch.testing.assert_close(gxt, w.t() @ gyt, atol=1e-5, rtol=1e-5)


@needs_compiler
def test_the_kernels_refuse_what_they_cannot_compute():
    assert kernels.native_available()
    crow, col = torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="float32"):
        kernels.spmm(crow, col, torch.ones(1), torch.ones(1, 3, dtype=torch.float64), 1)
    with pytest.raises(RuntimeError, match="dtypes differ"):
        kernels.spmm(crow, col.long(), torch.ones(1), torch.ones(1, 3), 1)
    with pytest.raises(RuntimeError, match="rows"):
        kernels.spmm(crow, col, torch.ones(1), torch.ones(1, 3), 2)
    with pytest.raises(RuntimeError, match="bias"):
        kernels.spmm(crow, col, torch.ones(1), torch.ones(1, 3), 1, bias=torch.ones(2))
    # a structure whose row pointers disagree with its entries, or too few values, is refused
    with pytest.raises(RuntimeError, match="crow ends at"):
        kernels.spmm(torch.tensor([0, 2], dtype=torch.int32), col, torch.ones(1), torch.ones(1, 3), 1)
    with pytest.raises(RuntimeError, match="values for"):
        kernels.spmm(crow, col, torch.ones(0), torch.ones(1, 3), 1)
    # pack always returns a new tensor (never a view of its input, even when no reordering is needed)
    one_strip = torch.ones(5, 2 * {"generic": 4, "avx2": 8, "avx512": 16}[kernels.isa()])
    assert kernels.pack(one_strip).data_ptr() != one_strip.data_ptr()
    # a packed operand of another shape or batch (or packed under another instruction set) is refused
    xp = kernels.pack(torch.ones(1, 3))
    with pytest.raises(RuntimeError, match="packed operand"):
        kernels.spmm_packed(crow, col, torch.ones(1), xp, 40, 1)
    with pytest.raises(RuntimeError, match="packed operand"):
        kernels.sddmm_packed(crow, col, xp[:, :0], xp, 3)


def test_backend_names_are_checked(restore_backend):
    with pytest.raises(ValueError, match="SPARSETRAIN_KERNELS"):
        kernels.set_backend("mkl")
    kernels.set_backend("torch")
    assert kernels.backend() == "torch" and not kernels.use_native(torch.ones(1))


def test_a_failed_build_falls_back_with_a_warning_or_raises_when_native_is_demanded(monkeypatch, caplog,
                                                                                    restore_backend):
    def broken():
        raise OSError("no compiler here")

    monkeypatch.setattr(kernels, "_build", broken)
    kernels._state.update(loaded=None, error=None, backend="auto")
    with caplog.at_level(logging.WARNING, logger="sparsetrain.sparse.kernels"):
        assert not kernels.use_native(torch.ones(1))
    assert "no compiler here" in caplog.text and "SPARSETRAIN_KERNELS=torch" in caplog.text
    assert "no compiler here" in kernels.native_error()
    with pytest.raises(RuntimeError, match="not available: OSError: no compiler here"):
        kernels.set_backend("native")
    kernels._state["backend"] = "native"
    with pytest.raises(RuntimeError, match="SPARSETRAIN_KERNELS=native"):
        kernels.use_native(torch.ones(1))


def test_other_dtypes_and_devices_use_torch_kernels(restore_backend):
    kernels._state["backend"] = "auto"
    assert not kernels.use_native(torch.ones(1, dtype=torch.float64))
    assert not kernels.use_native(torch.ones(1, dtype=torch.bfloat16))
    assert not kernels.use_native(torch.ones(1, device="meta"))
