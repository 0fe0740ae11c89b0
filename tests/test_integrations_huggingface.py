"""Hugging Face Trainer callback: attach, train, log, save with checkpoints and resume."""

import json

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import sparsetrain as st  # noqa: E402
from sparsetrain.integrations.huggingface import STATE_FILE, SparsetrainTrainerCallback  # noqa: E402


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x, labels=None):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class DS(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(96, 10, generator=g), torch.randint(0, 3, (96,), generator=g)

    def __len__(self):
        return 96

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def _trainer(out, steps, model, cb, save_steps=None):
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, learning_rate=0.05,
        lr_scheduler_type="constant", logging_steps=4, save_steps=save_steps or steps, report_to=[], use_cpu=True,
        seed=0, data_seed=0, disable_tqdm=True,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=DS(), callbacks=[cb])


def _callback():
    return SparsetrainTrainerCallback(st.RigL(density=0.25, update_interval=4, end=None))


def test_trainer_callback_trains_sparse_logs_and_resumes(tmp_path):
    cb = _callback()
    model = Tiny()
    tr = _trainer(tmp_path / "full", 24, model, cb)
    tr.train()
    sp = cb.sparsifier
    assert sp.step == 24 and sp.updates == 5
    for n, p in model.named_parameters():
        if n in sp.masks:
            assert bool((p[~sp.masks[n]] == 0).all()) and int(sp.masks[n].sum()) == sp.layers[n].n_active
    logs = [h for h in tr.state.log_history if "sparsetrain/itop_rate" in h]
    assert logs and logs[-1]["sparsetrain/updates"] == 5
    # a checkpoint at step 12 holds the sparsifier; resuming from it continues the schedule
    cb1 = _callback()
    tr1 = _trainer(tmp_path / "part", 24, Tiny(), cb1, save_steps=12)
    tr1.train()
    state = torch.load(tmp_path / "part" / "checkpoint-12" / STATE_FILE, weights_only=True)
    assert state["step"] == 12
    cb2 = _callback()
    m2 = Tiny()
    tr2 = _trainer(tmp_path / "part", 24, m2, cb2, save_steps=12)
    tr2.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-12"))
    sp2 = cb2.sparsifier
    assert sp2.step == 12 + 12 and sp2.updates == 5
    assert json.loads((tmp_path / "part" / "checkpoint-24" / "trainer_state.json").read_text())["global_step"] == 24
    for n in sp2.masks:
        assert bool((dict(m2.named_parameters())[n][~sp2.masks[n]] == 0).all())
        assert torch.equal(sp2.masks[n], sp.masks[n])  # the same run as the uninterrupted one
    for (n, a), (_, b) in zip(model.state_dict().items(), m2.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_resume_from_a_checkpoint_outside_output_dir_equals_the_uninterrupted_run(tmp_path):
    import shutil

    cb = _callback()
    full = Tiny()
    _trainer(tmp_path / "full", 24, full, cb).train()
    _trainer(tmp_path / "part", 24, Tiny(), _callback(), save_steps=12).train()
    # 1. resumed into another output_dir: the record in the restored TrainerState finds the file
    cb2, m2 = _callback(), Tiny()
    _trainer(tmp_path / "other", 24, m2, cb2).train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-12"))
    assert cb2.resumed_from == str(tmp_path / "part" / "checkpoint-12" / STATE_FILE)
    assert cb2.sparsifier.step == 24 and cb2.sparsifier.updates == 5
    # 2. the checkpoint moved away from where it was saved: resume_from names it
    moved = tmp_path / "elsewhere" / "ck"
    shutil.copytree(tmp_path / "part" / "checkpoint-12", moved)
    shutil.rmtree(tmp_path / "part")
    with pytest.raises(RuntimeError, match=r"resuming the Trainer at step 12.*resume_from='<checkpoint dir>'"):
        _trainer(tmp_path / "new", 24, Tiny(), _callback()).train(resume_from_checkpoint=str(moved))
    cb3, m3 = _callback(), Tiny()
    cb3.resume_from = str(moved)
    _trainer(tmp_path / "new2", 24, m3, cb3).train(resume_from_checkpoint=str(moved))
    assert cb3.resumed_from == str(moved / STATE_FILE)
    for sp, m in ((cb2.sparsifier, m2), (cb3.sparsifier, m3)):
        for n in sp.masks:
            assert torch.equal(sp.masks[n], cb.sparsifier.masks[n])
        for (n, a), (_, b) in zip(full.state_dict().items(), m.state_dict().items()):
            assert torch.allclose(a, b, atol=1e-6), n


def test_resume_without_sparsifier_state_or_with_a_stale_one_is_an_error(tmp_path):
    _trainer(tmp_path / "run", 8, Tiny(), _callback(), save_steps=4).train()
    ck4, ck8 = tmp_path / "run" / "checkpoint-4", tmp_path / "run" / "checkpoint-8"
    (ck4 / STATE_FILE).write_bytes((ck8 / STATE_FILE).read_bytes())  # a state of another step
    with pytest.raises(RuntimeError, match="its step is 8, the resumed checkpoint's 4"):
        _trainer(tmp_path / "run", 8, Tiny(), _callback()).train(resume_from_checkpoint=str(ck4))
    (ck4 / STATE_FILE).unlink()
    with pytest.raises(RuntimeError, match=r"sparsetrain.pt \(missing\)"):
        _trainer(tmp_path / "run", 8, Tiny(), _callback()).train(resume_from_checkpoint=str(ck4))


def test_a_damaged_state_file_is_named_and_the_next_candidate_tried(tmp_path):
    _trainer(tmp_path / "run", 8, Tiny(), _callback(), save_steps=4).train()
    ck4 = tmp_path / "run" / "checkpoint-4"
    good = (ck4 / STATE_FILE).read_bytes()
    (ck4 / STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(RuntimeError) as e:
        _trainer(tmp_path / "run", 8, Tiny(), _callback()).train(resume_from_checkpoint=str(ck4))
    assert "sparsetrain.pt (unreadable" in str(e.value) and "weights_only" not in str(e.value)
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / STATE_FILE).write_bytes(good)  # a readable copy given with resume_from is used first
    cb = SparsetrainTrainerCallback(st.RigL(density=0.25, update_interval=4, end=None), resume_from=str(moved))
    _trainer(tmp_path / "run", 8, Tiny(), cb).train(resume_from_checkpoint=str(ck4))
    assert cb.resumed_from == str(moved / STATE_FILE)


def test_few_topology_updates_warn():
    import warnings

    from sparsetrain.integrations.huggingface import _warn_few_updates

    with pytest.warns(UserWarning, match=r"only 1 topology update\(s\) fit in max_steps=200 with update_interval=100"):
        _warn_few_updates(st.RigL(density=0.1), 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_few_updates(st.RigL(density=0.1, update_interval=20), 200)
        _warn_few_updates(st.Static(density=0.1), 200)
