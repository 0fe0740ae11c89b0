"""sparsetrain.experiments.datasets.text: the offline byte-level corpus, its split, its context batches,
and a language-model run end to end (bits per byte, perplexity in the summary and the report)."""

import math
import zlib

import pytest
import torch

from sparsetrain.experiments.data import dataset_name, load_dataset
from sparsetrain.experiments.datasets.text import ContextLoader, load_text, stdlib_files


@pytest.fixture()
def tree(tmp_path):
    """A small source tree: 40 files, some in skipped directories."""
    for i in range(40):
        d = tmp_path / ("pkg" if i % 2 else "") / ("tests" if i % 10 == 3 else "")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i:02d}.py").write_text(f"# module {i}\n" + "def f(x):\n    return x * %d\n" % i * 20)
    (tmp_path / "notes.txt").write_text("not python")
    return tmp_path


def test_files_sorted_split_by_path_hash_and_deterministic(tree):
    files = stdlib_files(tree)
    assert files == sorted(files) and len(files) == 36 and not any("tests/" in f for f in files)
    train, valid, info = load_text("text:stdlib", tree)
    assert set(valid.files) == {f for f in files if zlib.crc32(f.encode()) % 20 == 0}
    assert set(train.files) | set(valid.files) == set(files) and not set(train.files) & set(valid.files)
    expected = b"".join((tree / f).read_bytes() for f in train.files)
    assert bytes(train.data.tolist()) == expected
    assert info["num_train"] == len(expected) and info["kind"] == "text" and info["num_classes"] == 256
    again, _, _ = load_text("text:stdlib", tree)
    assert torch.equal(again.data, train.data)
    assert dataset_name("TEXT:stdlib") == "text:stdlib" and load_dataset("text:stdlib", tree)[2]["name"] == "text:stdlib"


def test_the_real_stdlib_corpus_exists_offline():
    files = stdlib_files()
    assert len(files) > 300 and "os.py" in files and not any(f.startswith("test/") for f in files)


def test_context_batches_shift_by_one_and_resume_exactly():
    data = torch.arange(1000, dtype=torch.int64).remainder(251).to(torch.uint8)
    loader = ContextLoader(data, batch_size=4, context=8, contexts=10, seed=3)
    assert len(loader) == 3
    loader.set_epoch(2)
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 8), (4, 8), (2, 8)]
    for x, y in batches:
        assert x.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])
        assert torch.equal((x[:, 1:] - x[:, :-1]) % 251, torch.ones_like(x[:, 1:]))  # contiguous bytes
    loader.set_epoch(2, start_batch=1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches[1:], loader))
    loader.set_epoch(3)
    assert not torch.equal(next(iter(loader))[0], batches[0][0])  # another epoch, other contexts
    other = ContextLoader(data, batch_size=4, context=8, contexts=10, seed=4)
    other.set_epoch(2)
    assert not torch.equal(next(iter(other))[0], batches[0][0])


def test_evaluation_contexts_are_fixed_and_disjoint():
    data = torch.arange(1000, dtype=torch.int64).remainder(256).to(torch.uint8)
    ev = ContextLoader(data, batch_size=5, context=10, shuffle=False)
    starts = ev.offsets()
    assert len(starts) == 99 and bool((starts[1:] - starts[:-1] >= 10).all()) and int(starts[-1]) + 11 <= 1000
    assert torch.equal(torch.cat([x for x, _ in ev]), torch.cat([x for x, _ in ev]))
    with pytest.raises(ValueError, match="shorter than one context"):
        ContextLoader(data[:5], 2, 10)


def test_language_model_run_reports_bits_per_byte(tree, tmp_path):
    from sparsetrain.experiments.config import RunConfig
    from sparsetrain.experiments.report import aggregate, format_table
    from sparsetrain.experiments.runner import run

    cfg = RunConfig(model="gpt-micro", dataset="text:stdlib", data_root=str(tree), method="rigl", density=0.2,
                    epochs=2, batch_size=8, train_subset=32, optimizer="adamw", lr=3e-3, weight_decay=0.0,
                    algorithm_kwargs={"update_interval": 2})
    r = run(cfg, tmp_path / "run")
    assert r["steps"] == 8 and r["updates"] >= 2
    assert r["test_bpb"] == pytest.approx(r["test_loss"] / math.log(2))
    assert r["test_ppl"] == pytest.approx(math.exp(r["test_loss"]))
    assert r["curve"][-1]["test_bpb"] == pytest.approx(r["test_bpb"]) and r["best_test_bpb"] <= r["test_bpb"]
    assert r["test_bpb"] < 8.0  # learned something beyond uniform bytes
    assert 0 < r["inference_flops_fraction"] < 1
    table = format_table(aggregate([r]))
    assert "| val. bits/byte | val. perplexity | next-byte acc. (%) |" in table and f"| {r['test_bpb']:.3f} |" in table
    with pytest.raises(ValueError, match="do not fit together"):
        run(RunConfig(model="gpt-micro", dataset="synthetic", epochs=1))
