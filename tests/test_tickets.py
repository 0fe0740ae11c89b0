"""Sup-tickets: phase split, triangular LR, superposition arithmetic, pruning, recalibration, resume."""

import json
import math

import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain import cli
from sparsetrain.tickets import (
    TriangularLR, jaccard, phase_split, prune_to_budget, recalibrate_norms, superpose,
)


# ---------------------------------------------------------------------------- phase split / LR
def test_phase_split_matches_the_spec_example_and_rounds_down():
    assert phase_split(250, cycle_epochs=8, ratio=0.1) == (226, 3, 8)   # CIFAR: 226 + 3 × 8
    assert phase_split(30, cycle_epochs=1, ratio=0.1) == (27, 3, 1)
    assert phase_split(30, cycle_epochs=2, ratio=0.1) == (28, 1, 2)      # 3 epochs -> one 2-epoch cycle
    assert phase_split(10, cycle_epochs=2, cycles=4) == (2, 4, 2)
    with pytest.raises(ValueError, match="no full cycle"):
        phase_split(30, cycle_epochs=8, ratio=0.1)
    with pytest.raises(ValueError, match="base phase"):
        phase_split(8, cycle_epochs=2, cycles=4)
    with pytest.raises(ValueError, match="ratio"):
        phase_split(30, ratio=1.5)


def test_triangular_lr_formula_per_iteration():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = TriangularLR(opt, 0.001, 0.005, cycle_steps=10)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for i, lr in enumerate(seen):
        tau = (i % 10) / 10
        assert lr == pytest.approx(0.001 + 0.004 * (1 - abs(2 * tau - 1)))
    assert seen[0] == pytest.approx(0.001) and seen[5] == pytest.approx(0.005) and seen[10] == pytest.approx(0.001)


def _mlp(bn=True):
    torch.manual_seed(0)
    layers = [nn.Linear(12, 32)] + ([nn.BatchNorm1d(32)] if bn else []) + [nn.ReLU(), nn.Linear(32, 4)]
    return nn.Sequential(*layers)


def _batches(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 12, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(n)]


@pytest.mark.filterwarnings("ignore:.*no sparse layer received a gradient:RuntimeWarning")  # steps without backward
def test_lr_scheduler_composes_base_then_cycles():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.3, update_interval=4), total_steps=12)
    tk = st.SupTickets(sp, epochs=5, steps_per_epoch=6, cycle_epochs=1, cycles=3, lr_low=0.001, lr_high=0.005)
    assert (tk.pre_epochs, tk.pre_steps, tk.cycle_steps) == (2, 12, 6)
    sched = tk.lr_scheduler(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tk.pre_steps))
    lrs = []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    base = [0.05 * (1 + math.cos(math.pi * i / 12)) for i in range(12)]
    assert lrs[:12] == pytest.approx(base)
    tri = [0.001 + 0.004 * (1 - abs(2 * (i % 6) / 6 - 1)) for i in range(18)]
    assert lrs[12:] == pytest.approx(tri)
    sp.remove()


# ---------------------------------------------------------------------------- arithmetic
def test_superpose_cumulative_average_equals_the_mean_of_all_models():
    models = [torch.tensor([0.0, 0.0, 2.0]), torch.tensor([3.0, 3.0, 2.0]), torch.tensor([0.0, 6.0, 5.0])]
    sup = {"w": models[0].clone(), "n": torch.tensor(0)}
    for k, t in enumerate(models[1:], start=1):
        superpose(sup, {"w": t, "n": torch.tensor(10 * k)}, k)
    assert torch.allclose(sup["w"], torch.stack(models).mean(0))
    assert int(sup["n"]) == 20  # integer buffers take the ticket's value


def test_superpose_exponential_variant_and_key_check():
    sup = {"w": torch.tensor([1.0, 2.0])}
    superpose(sup, {"w": torch.tensor([3.0, 0.0])}, 1, beta=0.75)
    assert torch.allclose(sup["w"], torch.tensor([0.75 * 1 + 0.25 * 3, 0.75 * 2]))
    with pytest.raises(ValueError, match="keys"):
        superpose(sup, {"v": torch.tensor([1.0, 1.0])}, 1)
    with pytest.raises(ValueError, match="1-based"):
        superpose(sup, {"w": torch.tensor([1.0, 1.0])}, 0)


def test_prune_to_budget_is_global_exact_and_consistent_with_zeros():
    a = torch.tensor([[0.1, -5.0], [0.3, 0.0]])
    b = torch.tensor([4.0, -0.2, 0.25, 3.0, -0.05])
    masks = prune_to_budget({"a": a, "b": b}, 4)
    assert masks["a"].tolist() == [[False, True], [True, False]]
    assert masks["b"].tolist() == [True, False, False, True, False]
    assert torch.equal(a, torch.tensor([[0.0, -5.0], [0.3, 0.0]]))
    assert int(masks["a"].sum() + masks["b"].sum()) == 4
    g = torch.Generator().manual_seed(3)
    ws = {f"l{i}": torch.randn(7 + i, 5, generator=g) for i in range(4)}
    for budget in (0, 1, 37, 100, sum(w.numel() for w in ws.values())):
        w2 = {k: v.clone() for k, v in ws.items()}
        m = prune_to_budget(w2, budget)
        assert sum(int(x.sum()) for x in m.values()) == budget
        assert all(bool((w2[k][~m[k]] == 0).all()) for k in w2)


def test_jaccard():
    a = {"x": torch.tensor([True, True, False, False])}
    b = {"x": torch.tensor([True, False, True, False])}
    assert jaccard(a, b) == pytest.approx(1 / 3)
    assert jaccard(a, a) == 1.0


# ---------------------------------------------------------------------------- norm statistics
def test_recalibrate_norms_recomputes_batchnorm_statistics_exactly():
    model = _mlp()
    data = _batches(5)
    model[1].running_mean.fill_(7.0)
    model[1].running_var.fill_(7.0)
    model.eval()
    n = recalibrate_norms(model, data)
    assert n == 5 and not model.training and model[1].momentum == 0.1
    with torch.no_grad():
        hs = [model[0](x) for x, _ in data]
    mean = torch.stack([h.mean(0) for h in hs]).mean(0)
    var = torch.stack([h.var(0, unbiased=True) for h in hs]).mean(0)
    assert torch.allclose(model[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(model[1].running_var, var, atol=1e-5)


def test_recalibrate_norms_without_norm_layers_touches_no_data():
    class Exploding:
        def __iter__(self):
            raise AssertionError("data must not be read")

    assert recalibrate_norms(_mlp(bn=False), Exploding()) == 0


# ---------------------------------------------------------------------------- the whole phase
def _train(model, opt, sched, tk, data, epochs, evaluate=None):
    for _ in range(epochs):
        for x, y in data:
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        tk.epoch_end(recalibrate=data, evaluate=evaluate)


def _setup(method="rigl", epochs=6, density=0.2, bn=True, **kw):
    model = _mlp(bn)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    alg = st.make_algorithm(method, density=density, update_interval=3, seed=0)
    tk_kw = dict(cycle_epochs=1, cycles=3, lr_low=0.01, lr_high=0.05)
    tk_kw.update(kw)
    e_pre, _, _ = phase_split(epochs, tk_kw["cycle_epochs"], cycles=tk_kw["cycles"])
    sp = st.Sparsifier(model, opt, alg, total_steps=e_pre * 6)
    tk = st.SupTickets(sp, epochs=epochs, steps_per_epoch=6, **tk_kw)
    sched = tk.lr_scheduler(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tk.pre_steps))
    return model, opt, sp, tk, sched


@pytest.mark.parametrize("method", ["rigl", "set", "dstee", "granet"])
def test_full_run_superposes_prunes_to_budget_and_leaves_live_model_alone(method):
    model, opt, sp, tk, sched = _setup(method)
    data = _batches()
    evaluate_calls = []

    def evaluate(m):
        evaluate_calls.append(m)
        was = m.training
        m.eval()
        with torch.no_grad():
            acc = float((m(data[0][0]).argmax(1) == data[0][1]).float().mean())
        m.train(was)
        return acc

    _train(model, opt, sched, tk, data, tk.pre_epochs)
    assert tk.model is not None and tk.model is not model and sp.updates_paused
    n_updates_base = len(sp.history)
    for cycle in range(tk.cycles):
        for x, y in data:
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        live_before = {k: v.clone() for k, v in model.state_dict().items()}
        rec = tk.epoch_end(recalibrate=data, evaluate=evaluate)
        # the live model is untouched by capture, superposition, pruning and recalibration
        assert all(torch.equal(live_before[k], v) for k, v in model.state_dict().items())
        assert rec["ticket"] == cycle + 1 and "ticket_acc" in rec and "sup_acc" in rec
        assert rec["density_after"] == pytest.approx(sp.density)  # the budget, measured like sp.density
        assert rec["density_before"] >= rec["density_after"] - 1e-9
        if cycle:
            assert 0 < rec["overlap_prev"] <= 1
    # exactly one forced 50% drop-and-grow at each cycle's start, no scheduled updates in cycles
    cycle_records = sp.history[n_updates_base:]
    assert len(cycle_records) == tk.cycles and all(r.get("forced") == "magnitude/gradient" for r in cycle_records)
    assert all(r["step"] == tk.pre_steps + i * tk.cycle_steps + 1 for i, r in enumerate(cycle_records))
    # the result: exact budget, masks consistent with its zeros, per-layer exact mask/weight agreement
    sup = tk.model.state_dict()
    assert sum(int(tk.masks[n].sum()) for n in sp.layers) == tk.budget
    for n in sp.layers:
        assert bool((sup[n][~tk.masks[n]] == 0).all())
    # the superposed model's norm statistics are its own (recalibrated), not the live model's
    assert not torch.equal(sup["1.running_mean"], model.state_dict()["1.running_mean"])
    assert len(tk.ensemble().members) == tk.cycles
    # one epoch_end past the planned epochs would superpose a ticket beyond K: refused
    with pytest.raises(ValueError, match=r"epoch_end called for epoch \d+ of a \d+-epoch run"):
        tk.epoch_end()
    assert len(tk.history) == tk.cycles


def test_superposed_model_is_the_average_of_base_and_tickets_before_pruning():
    model, opt, sp, tk, sched = _setup("rigl", epochs=4, cycles=2, bn=False)
    data = _batches()
    _train(model, opt, sched, tk, data, tk.pre_epochs)
    base = {k: v.clone() for k, v in tk.model.state_dict().items()}
    _train(model, opt, sched, tk, data, 1)
    t1 = tk.ticket_states[0]
    expected = {k: (base[k] + t1[k]) / 2 for k in base}
    got = tk.model.state_dict()
    for k in expected:
        if k in sp.layers:  # pruned back to the budget: the kept entries equal the average
            m = tk.masks[k]
            assert torch.allclose(got[k][m], expected[k][m])
        else:
            assert torch.allclose(got[k], expected[k])


def test_resume_in_the_middle_of_a_cycle_is_exact(tmp_path):
    data = _batches()

    def run_all():
        model, opt, sp, tk, sched = _setup("dstee")
        _train(model, opt, sched, tk, data, tk.epochs)
        return tk.model.state_dict(), model.state_dict(), tk.history

    def run_split():
        model, opt, sp, tk, sched = _setup("dstee")
        _train(model, opt, sched, tk, data, tk.pre_epochs + 1)
        for x, y in data[:2]:  # two steps into the second cycle
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        path = tmp_path / "ckpt.pt"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "sp": sp.state_dict(), "tk": tk.state_dict()}, path)
        sp.remove()
        ck = torch.load(path, weights_only=True)
        model, opt, sp, tk, sched = _setup("dstee")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        sp.load_state_dict(ck["sp"])
        tk.load_state_dict(ck["tk"])
        for x, y in data[2:]:
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        tk.epoch_end(recalibrate=data)
        _train(model, opt, sched, tk, data, tk.epochs - tk.epoch)
        return tk.model.state_dict(), model.state_dict(), tk.history

    sup_a, live_a, hist_a = run_all()
    sup_b, live_b, hist_b = run_split()
    assert all(torch.equal(sup_a[k], sup_b[k]) for k in sup_a)
    assert all(torch.equal(live_a[k], live_b[k]) for k in live_a)
    assert [h["density_before"] for h in hist_a] == [h["density_before"] for h in hist_b]


def test_ensemble_of_one_ticket_is_that_ticket():
    model, opt, sp, tk, sched = _setup("rigl", epochs=2, cycles=1, bn=False)
    data = _batches()
    _train(model, opt, sched, tk, data, 2)
    ens = tk.ensemble()
    x = data[0][0]
    with torch.no_grad():
        assert torch.allclose(ens(x), model(x).log_softmax(-1), atol=1e-6)


def test_bad_arguments_are_rejected():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, st.RigL(density=0.3), total_steps=10)
    with pytest.raises(ValueError, match="grow"):
        st.SupTickets(sp, 10, 5, cycle_epochs=1, grow="magic")
    with pytest.raises(ValueError, match="beta"):
        st.SupTickets(sp, 10, 5, cycle_epochs=1, beta=1.0)
    with pytest.raises(ValueError, match="drop_fraction"):
        st.SupTickets(sp, 10, 5, cycle_epochs=1, drop_fraction=1.5)
    with pytest.raises(TypeError, match="Sparsifier"):
        st.SupTickets(object(), 10, 5)
    with pytest.raises(ValueError, match="0 <= lr_low <= lr_high"):  # an inverted cycle
        st.SupTickets(sp, 10, 5, cycle_epochs=1, lr_low=0.1, lr_high=0.01)
    with pytest.raises(ValueError, match="epochs must be a whole number, got 10.7"):
        st.SupTickets(sp, 10.7, 5, cycle_epochs=1)
    with pytest.raises(ValueError, match="cycle_epochs must be a whole number"):
        st.SupTickets(sp, 10, 5, cycle_epochs=1.9)
    with pytest.raises(ValueError, match="cycles must be a whole number, got 1.5"):
        st.SupTickets(sp, 10, 5, cycle_epochs=1, cycles=1.5)
    tk = st.SupTickets(sp, 10, 5, cycle_epochs=1)
    other = st.SupTickets(sp, 20, 5, cycle_epochs=1)
    with pytest.raises(ValueError, match="phase split"):
        other.load_state_dict(tk.state_dict())
    with pytest.raises(ValueError, match="drop_fraction"):
        sp.request_update(2.0)


def test_request_update_keeps_exact_counts_and_zero_state():
    model = _mlp(bn=False)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sp = st.Sparsifier(model, opt, st.SET(density=0.25, update_interval=1000), total_steps=100)
    counts = {n: int(m.sum()) for n, m in sp.masks.items()}
    data = _batches()
    sp.request_update(0.5, grow="random")
    for x, y in data[:2]:
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    rec = sp.history[-1]
    assert rec["forced"] == "magnitude/random" and rec["step"] == 1 and len(sp.history) == 1
    assert {n: int(m.sum()) for n, m in sp.masks.items()} == counts
    assert rec["turnover"] > 0.3
    for n, m in sp.masks.items():
        p = dict(model.named_parameters())[n]
        assert bool((p[~m] == 0).all())
        for v in opt.state[p].values():
            if v.shape == p.shape:
                assert bool((v[~m] == 0).all())


def test_compare_runs_sup_tickets_end_to_end(tmp_path):
    out = tmp_path / "st"
    rc = cli.main(["compare", "--methods", "rigl,rigl+sup-tickets", "--densities", "0.2", "--seeds", "0",
                   "--dataset", "synthetic", "--epochs", "4", "--cycle-epochs", "1", "--cycles", "2",
                   "--update-interval", "4", "--batch-size", "64", "--out", str(out)])
    assert rc == 0
    run = json.loads((out / "runs" / "rigl+sup-tickets-d0.2-s0.json").read_text())
    assert len(run["tickets"]) == 2 and run["sup_density"] == pytest.approx(0.2, abs=2e-3)
    assert 0 <= run["ensemble_test_acc"] <= 1 and 0 <= run["live_test_acc"] <= 1
    text = (out / "results.md").read_text()
    assert "| rigl+sup-tickets | 80% |" in text and "## Sup-tickets" in text


def test_sup_tickets_on_a_truly_sparse_model_equal_the_masked_dense_run():
    """Sup-tickets read and write weights through the storages: on SparseLinear layers the masks,
    the superposed model and its outputs equal the masked-dense run's. (Without BatchNorm: after a
    very sparse first layer a unit with no active input has zero batch variance, and BatchNorm
    amplifies float noise in its gradient by 1/√eps, so the two runs' RigL growth parts ways.)"""
    bn = False
    from sparsetrain.sparse import SparseLinear, to_sparse
    from sparsetrain.storage import dense_state
    from sparsetrain.testing import assert_invariants

    data = _batches()
    results = []
    for compressed in (False, True):
        model = _mlp(bn)
        if compressed:
            to_sparse(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        alg = st.make_algorithm("rigl", density=0.2, update_interval=3, seed=0)
        sp = st.Sparsifier(model, opt, alg, total_steps=3 * 6)
        tk = st.SupTickets(sp, epochs=6, steps_per_epoch=6, cycle_epochs=1, cycles=3, lr_low=0.01, lr_high=0.05)
        sched = tk.lr_scheduler(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tk.pre_steps))
        for _ in range(tk.epochs):
            for x, y in data:
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                sched.step()
                assert_invariants(sp, opt)
            tk.epoch_end(recalibrate=data)
        assert tk.tickets_done == 3
        if compressed:
            assert all(isinstance(m, SparseLinear) for m in (tk.model[0], tk.model[-1]))
            assert sum(m.nnz for m in tk.model.modules() if isinstance(m, SparseLinear)) == tk.budget
        with torch.no_grad():
            tk.model.eval()
            out = tk.model(data[0][0])
        results.append((dense_state(tk.model), tk.masks, out, [h["density_before"] for h in tk.history],
                        len(tk.ensemble().members)))
    (sa, ma, oa, da, ea), (sb, mb, ob, db, eb) = results
    assert set(sa) == set(sb)
    assert all(torch.equal(ma[n], mb[n]) for n in ma)
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5), k
    assert torch.allclose(oa, ob, atol=1e-5) and da == pytest.approx(db) and ea == eb == 3


def test_cli_trains_sup_tickets_on_compressed_layers(tmp_path):
    out = tmp_path / "run"
    rc = cli.main(["train", "--method", "rigl+sup-tickets", "--execution", "sparse", "--density", "0.2",
                   "--dataset", "synthetic", "--epochs", "3", "--cycle-epochs", "1", "--cycles", "1",
                   "--hp", "update_interval=4", "--batch-size", "64", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["tickets"]) == 1 and summary["sup_density"] == pytest.approx(0.2, abs=2e-3)


def test_runner_schedule_with_warm_up_then_cycles_loses_no_step():
    # warm-up + cosine, then the cycles: one flat SequentialLR (torch's nested SequentialLR skips a
    # warm-up step and shifts the cosine by one)
    import warnings as _w

    from sparsetrain.experiments.build import build_scheduler
    from sparsetrain.experiments.config import RunConfig
    from sparsetrain.tickets import TriangularLR

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_scheduler(RunConfig(schedule="cosine", warmup_epochs=0.25), opt, 8, 8,
                            then=lambda o: TriangularLR(o, 0.001, 0.005, 4))
    lrs = []
    with _w.catch_warnings():
        _w.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()"
        for _ in range(12):
            lrs.append(round(opt.param_groups[0]["lr"], 4))
            opt.step()
            sched.step()
    assert lrs == [0.05, 0.075, 0.1, 0.0933, 0.075, 0.05, 0.025, 0.0067, 0.001, 0.003, 0.005, 0.003]
