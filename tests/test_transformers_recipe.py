"""docs/integrations.md's GPT-2 recipe: a tiny GPT2Config (no download), the HF Trainer with the
sparsetrain callback, on the text:stdlib corpus (here a small source tree), for a few steps."""

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import sparsetrain as st  # noqa: E402
from sparsetrain.experiments.data import ContextLoader, load_dataset  # noqa: E402
from sparsetrain.integrations.huggingface import SparsetrainTrainerCallback  # noqa: E402


class Contexts(torch.utils.data.Dataset):
    def __init__(self, corpus, n, context, seed=0):
        self.x, _ = next(iter(ContextLoader(corpus, batch_size=n, context=context, contexts=n, seed=seed)))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


def test_gpt2_recipe_trains_sparse_projections_with_the_trainer(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 30)
    train, valid, info = load_dataset("text:stdlib", src)
    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(vocab_size=256, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    cb = SparsetrainTrainerCallback(st.RigL(density=0.1, update_interval=1))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=8, learning_rate=3e-3,
        logging_steps=4, save_steps=8, report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Contexts(train, 64, 32), callbacks=[cb])
    trainer.train()
    sp = cb.sparsifier
    assert sp.step == 8 and sp.updates == 5  # after steps 1..5 (RigL ends at 75%: step 6)
    assert len(sp.layers) == 8 and all(n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) for n in sp.layers)
    assert model.lm_head.weight is model.transformer.wte.weight and float(model.transformer.wte.weight.abs().min()) > 0
    text = sp.summary()
    assert "embedding, tied to lm_head.weight" in text and "Conv1D" in text
    loss = trainer.evaluate(Contexts(valid, 16, 32))["eval_loss"]
    assert math.isfinite(loss) and loss / math.log(2) < 8.0
    r = st.flops(model, torch.zeros(1, 32, dtype=torch.long), masks=sp.masks)
    assert len(r.attention) == 2 and 0.1 < r.fraction < 0.6
