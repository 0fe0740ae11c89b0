"""PyTorch Lightning callback: attach, train, log, save and resume through Lightning's checkpoints."""

import pytest
import torch
from torch import nn

pl = pytest.importorskip("pytorch_lightning")

import sparsetrain as st  # noqa: E402
from sparsetrain.integrations.lightning import SparsetrainCallback  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class StopAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def _loader():
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(96, 10, generator=g), torch.randint(0, 3, (96,), generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False)


def _trainer(tmp_path, steps, **kw):
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=pl.loggers.CSVLogger(str(tmp_path)),
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                      log_every_n_steps=1, **kw)


def _callback():
    return SparsetrainCallback(st.RigL(density=0.25, update_interval=4, end=None))


def test_lightning_callback_trains_sparse_logs_and_resumes_exactly(tmp_path):
    # uninterrupted: 24 steps
    full_cb = _callback()
    full_cb_model = Tiny()
    t = _trainer(tmp_path / "full2", 24, callbacks=[full_cb])
    t.fit(full_cb_model, _loader())
    spf = full_cb.sparsifier
    assert spf.step == 24 and spf.updates == 5
    for n, p in full_cb_model.named_parameters():
        if n in spf.masks:
            assert bool((p[~spf.masks[n]] == 0).all())
            assert int(spf.masks[n].sum()) == spf.layers[n].n_active
    logged = (tmp_path / "full2" / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "sparsetrain/itop_rate" in logged and "sparsetrain/turnover" in logged

    # interrupted at 12 steps, checkpoint, resume to 24 in a new trainer with a new callback
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_last=True, every_n_train_steps=12)
    cb1 = _callback()
    m1 = Tiny()
    # same max_steps (the schedules depend on it), stopped after 12 steps
    _trainer(tmp_path / "a", 24, callbacks=[cb1, ckpt, StopAt(12)]).fit(m1, _loader())
    assert cb1.sparsifier.step == 12
    cb2 = _callback()
    m2 = Tiny()
    _trainer(tmp_path / "b", 24, callbacks=[cb2]).fit(m2, _loader(), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    sp2 = cb2.sparsifier
    assert sp2.step == 24 and sp2.updates == 5
    assert all(torch.equal(sp2.masks[n], spf.masks[n]) for n in spf.masks)
    for (n, a), (_, b) in zip(full_cb_model.state_dict().items(), m2.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), n


@pytest.mark.parametrize("index, stepping, words", [
    (1, 10, ["optimizer_index=1", "1 optimizer"]),
    (0, float("inf"), ["max_steps", "length"]),
])
def test_an_unusable_trainer_is_one_clear_error(index, stepping, words):
    from types import SimpleNamespace

    model = nn.Linear(4, 3)
    trainer = SimpleNamespace(optimizers=[torch.optim.SGD(model.parameters(), lr=0.1)],
                              estimated_stepping_batches=stepping)
    cb = SparsetrainCallback(st.RigL(density=0.5), optimizer_index=index)
    with pytest.raises(ValueError) as e:
        cb.on_fit_start(trainer, model)
    for w in words:
        assert w in str(e.value), str(e.value)


class TwoOptimizers(pl.LightningModule):
    """A GAN-like module: a generator and a discriminator, each with its own optimizer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization = False
        self.g = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 10))
        self.d = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        og, od = self.optimizers()
        x = batch[0]
        fake = self.g(torch.randn_like(x))
        og.zero_grad()
        self.manual_backward(-self.d(fake).mean())
        og.step()
        od.zero_grad()
        self.manual_backward(self.d(fake.detach()).mean() - self.d(x).mean())
        od.step()

    def configure_optimizers(self):
        return [torch.optim.SGD(self.g.parameters(), lr=0.01, momentum=0.9),
                torch.optim.SGD(self.d.parameters(), lr=0.01, momentum=0.9)]


@pytest.mark.parametrize("truly_sparse_d", [False, True])
def test_with_several_optimizers_only_the_chosen_ones_weights_are_sparse(tmp_path, truly_sparse_d):
    # the other optimizer's weights used to be selected too, and the Sparsifier refused them (also
    # when they are truly sparse layers, whose 1-D values are selected as "<layer>.weight")
    cb = SparsetrainCallback(st.RigL(density=0.25, update_interval=4, end=None), optimizer_index=0)
    model = TwoOptimizers()
    if truly_sparse_d:
        st.sparse.to_sparse(model.d)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), enable_checkpointing=False,
                         callbacks=[cb])
    trainer.fit(model, _loader())
    sp = cb.sparsifier
    assert set(sp.masks) == {"g.0.weight", "g.2.weight"}
    assert sp.step == 12 and sp.updates == 2
    for n in sp.masks:
        p = model.get_parameter(n)
        assert bool((p[~sp.masks[n]] == 0).all()) and int(sp.masks[n].sum()) == sp.layers[n].n_active
    d0 = model.d[0].dense_weight() if truly_sparse_d else model.d[0].weight
    assert bool((d0 != 0).all())  # the discriminator trained dense
