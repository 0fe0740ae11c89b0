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
    assert sp.step == 24 and sp.updates == 6
    for n, p in model.named_parameters():
        if n in sp.masks:
            assert bool((p[~sp.masks[n]] == 0).all()) and int(sp.masks[n].sum()) == sp.layers[n].n_active
    logs = [h for h in tr.state.log_history if "sparsetrain/itop_rate" in h]
    assert logs and logs[-1]["sparsetrain/updates"] == 6
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
    assert sp2.step == 12 + 12 and sp2.updates == 6
    assert json.loads((tmp_path / "part" / "checkpoint-24" / "trainer_state.json").read_text())["global_step"] == 24
    for n in sp2.masks:
        assert bool((dict(m2.named_parameters())[n][~sp2.masks[n]] == 0).all())
        assert torch.equal(sp2.masks[n], sp.masks[n])  # the same run as the uninterrupted one
    for (n, a), (_, b) in zip(model.state_dict().items(), m2.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), n
