"""DDP on 2 CPU processes (gloo): same masks on every rank, equal to one process with the global batch."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import sparsetrain as st

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

STEPS, GLOBAL_BATCH = 24, 32


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 4))


def _batches():
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(GLOBAL_BATCH, 12, generator=g), torch.randint(0, 4, (GLOBAL_BATCH,), generator=g))
            for _ in range(STEPS)]


def _algorithm(seed=0, kind="rigl"):
    if kind == "set":
        return st.SET(density=0.2, update_interval=4, seed=seed)
    return st.RigL(density=0.2, update_interval=4, seed=seed)


def _train(model, sp_model, opt, rank, world, start=0, stop=STEPS, kind="rigl", seed=0, sp=None):
    sp = sp or st.Sparsifier(sp_model, opt, _algorithm(seed, kind), total_steps=STEPS)
    history = []
    seen = len(sp.history)
    per = GLOBAL_BATCH // world
    for i, (x, y) in enumerate(_batches()[start:stop], start=start):
        xs, ys = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        nn.functional.cross_entropy(model(xs), ys).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if len(sp.history) > seen:
            seen = len(sp.history)
            history.append({n: m.clone() for n, m in sp.masks.items()})
    return sp, history


def _worker(rank, world, init, out, mode):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        _work(rank, world, out, mode)
    except BaseException:
        import traceback

        with open(f"{out}/error{rank}.txt", "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        # free DDP's reducer before the process group, and let no rank tear gloo down while
        # another still talks to it
        import gc

        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def _work(rank, world, out, mode):
    if True:
        inner = _model()
        if mode == "wrap-first":
            model = nn.parallel.DistributedDataParallel(inner)
            sp_model = model  # attach after wrapping: names get the "module." prefix
        else:
            sp_model = inner
            model = None
        opt = torch.optim.SGD(inner.parameters(), lr=0.05, momentum=0.9)
        if mode == "diverge":
            sp = st.Sparsifier(inner, opt, _algorithm(seed=rank, kind="set"), total_steps=STEPS)
            model = nn.parallel.DistributedDataParallel(inner)
            try:
                _train(model, inner, opt, rank, world, sp=sp)
            except RuntimeError as e:
                torch.save({"error": str(e)}, f"{out}/rank{rank}.pt")
                return
            torch.save({"error": None}, f"{out}/rank{rank}.pt")
            return
        if mode == "resume":
            ck = torch.load(f"{out}/ckpt.pt", weights_only=True)
            sp = st.Sparsifier(inner, opt, _algorithm(), total_steps=STEPS)
            inner.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            sp.load_state_dict(ck["sp"])
            model = nn.parallel.DistributedDataParallel(inner)
            sp, _ = _train(model, inner, opt, rank, world, start=STEPS // 2, sp=sp)
            torch.save({"weights": {k: v.clone() for k, v in inner.state_dict().items()}},
                       f"{out}/resumed{rank}.pt")
            return
        if model is None:
            sp = st.Sparsifier(inner, opt, _algorithm(), total_steps=STEPS)  # attach before wrapping
            model = nn.parallel.DistributedDataParallel(inner)
            sp_half, hist = _train(model, inner, opt, rank, world, stop=STEPS // 2, sp=sp)
            if rank == 0:
                torch.save({"model": inner.state_dict(), "opt": opt.state_dict(), "sp": sp.state_dict()},
                           f"{out}/ckpt.pt")
            dist.barrier()
            sp, hist2 = _train(model, inner, opt, rank, world, start=STEPS // 2, sp=sp)
            hist += hist2
        else:
            sp, hist = _train(model, sp_model, opt, rank, world)
        torch.save({"history": hist, "weights": {k: v.clone() for k, v in inner.state_dict().items()},
                    "updates": sp.updates}, f"{out}/rank{rank}.pt")


def _spawn(tmp_path, mode, world=2):
    init = f"file://{tmp_path}/store-{mode}"
    mp.spawn(_worker, args=(world, init, str(tmp_path), mode), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _single_process():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp, hist = _train(model, model, opt, 0, 1)
    return hist, model.state_dict()


@pytest.mark.slow
def test_ddp_two_ranks_agree_and_match_one_process_with_the_global_batch(tmp_path):
    r0, r1 = _spawn(tmp_path, "attach-first")
    ref_hist, ref_weights = _single_process()
    assert r0["updates"] == r1["updates"] == len(ref_hist) >= 3
    for a, b, ref in zip(r0["history"], r1["history"], ref_hist):
        assert all(torch.equal(a[n], b[n]) for n in a)          # every rank, every update
        assert all(torch.equal(a[n], ref[n]) for n in a)        # = one process, global batch
    for k, v in ref_weights.items():
        assert torch.allclose(r0["weights"][k], v, atol=1e-5) and torch.equal(r0["weights"][k], r1["weights"][k])
    # a checkpoint saved by rank 0 at half time resumes on 2 ranks to the same end
    mp.spawn(_worker, args=(2, f"file://{tmp_path}/store-resume", str(tmp_path), "resume"), nprocs=2, join=True)
    resumed = torch.load(tmp_path / "resumed0.pt", weights_only=True)["weights"]
    for k, v in r0["weights"].items():
        assert torch.allclose(resumed[k], v, atol=1e-6)
    # ... and in one process (another world size): the sparsifier state is rank-independent
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = st.Sparsifier(model, opt, _algorithm(), total_steps=STEPS)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    sp.load_state_dict(ck["sp"])
    _train(model, model, opt, 0, 1, start=STEPS // 2, sp=sp)
    for k, v in r0["weights"].items():
        assert torch.allclose(model.state_dict()[k], v, atol=1e-5)


@pytest.mark.slow
def test_ddp_attach_after_wrapping_works_too(tmp_path):
    r0, r1 = _spawn(tmp_path, "wrap-first")
    ref_hist, _ = _single_process()
    assert len(r0["history"]) == len(ref_hist)
    for a, b, ref in zip(r0["history"], r1["history"], ref_hist):
        assert list(a) == [f"module.{n}" for n in ref]
        assert all(torch.equal(a[n], b[n]) and torch.equal(a[n], ref[n[len("module."):]]) for n in a)


@pytest.mark.slow
def test_diverging_ranks_are_detected_naming_the_layer(tmp_path):
    r0, r1 = _spawn(tmp_path, "diverge")
    for r in (r0, r1):
        assert r["error"] is not None and "differ between this rank and rank" in r["error"]
        assert ".weight" in r["error"] and "same algorithm seed" in r["error"]
