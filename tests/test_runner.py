"""The experiment runner: run directories, atomic checkpoints, exact resume (also after SIGKILL)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparsetrain.experiments.runner import RunConfig, RunExistsError, run

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cfg(**kw):
    base = dict(model="mlp", dataset="synthetic", method="rigl", density=0.2, epochs=3, batch_size=64,
                algorithm_kwargs={"update_interval": 3}, threads=1)
    base.update(kw)
    return RunConfig(**base)


def _final_state(out: Path):
    return torch.load(out / "checkpoint_last.pt", weights_only=True)


def _assert_same_run(a: Path, b: Path):
    ca, cb = _final_state(a), _final_state(b)
    for part in ("model",):
        assert ca[part].keys() == cb[part].keys()
        assert all(torch.equal(ca[part][k], cb[part][k]) for k in ca[part])
    sa, sb = ca["sparsifier"], cb["sparsifier"]
    for n in sa["layers"]:
        assert torch.equal(sa["layers"][n]["mask"], sb["layers"][n]["mask"])
        assert torch.equal(sa["layers"][n]["counter"], sb["layers"][n]["counter"])
    oa, ob = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert all(torch.equal(oa[k]["momentum_buffer"], ob[k]["momentum_buffer"]) for k in oa)
    ma = (a / "metrics.jsonl").read_text().splitlines()
    mb = (b / "metrics.jsonl").read_text().splitlines()
    assert len(ma) == len(mb)
    for x, y in zip(ma, mb):
        x, y = json.loads(x), json.loads(y)
        x.pop("wall", None), y.pop("wall", None)
        assert x == y


def test_run_directory_contents(tmp_path):
    out = tmp_path / "r"
    r = run(_cfg(), out)
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "summary.json",
                                               "checkpoint_last.pt", "checkpoint_best.pt"}
    assert not list(out.glob("*.tmp"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_acc"] == r["test_acc"] and summary["label"] == "rigl"
    assert summary["versions"]["torch"] == torch.__version__
    assert summary["config"]["density"] == 0.2 and 0 < summary["train_flops_fraction"] < 1
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [l for l in lines if l["type"] == "epoch"]
    updates = [l for l in lines if l["type"] == "update"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert len(updates) == summary["updates"] > 0 and all("turnover" in u and "itop_rate" in u for u in updates)
    best = torch.load(out / "checkpoint_best.pt", weights_only=True)
    assert best["test_acc"] == summary["best_test_acc"]
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["method"] == "rigl" and config["total_steps"] == 3 * config["steps_per_epoch"]


def test_existing_directory_is_never_silently_overwritten(tmp_path):
    out = tmp_path / "r"
    run(_cfg(epochs=1), out)
    with pytest.raises(RunExistsError, match="--resume"):
        run(_cfg(epochs=1), out)
    again = run(_cfg(epochs=1), out, resume=True)  # finished: returns its summary
    assert again["test_acc"] == json.loads((out / "summary.json").read_text())["test_acc"]
    with pytest.raises(ValueError, match="different settings"):
        (out / "summary.json").unlink()
        run(_cfg(epochs=1, lr=0.5), out, resume=True)
    r = run(_cfg(epochs=1, lr=0.5), out, overwrite=True)
    assert json.loads((out / "summary.json").read_text())["config"]["lr"] == 0.5 and r["config"]["lr"] == 0.5


@pytest.mark.parametrize("bad,match", [
    (dict(model="resnet1000"), "unknown model"), (dict(dataset="imagenet"), "unknown dataset"),
    (dict(method="magic"), "unknown method"), (dict(density=1.5), r"\(0, 1\]"), (dict(optimizer="lion"), "optimizer"),
    (dict(amp="fp16"), "CUDA"), (dict(epochs=0), "epochs"), (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(sup_tickets=True, method="dense"), "sparse method"), (dict(schedule="step"), "schedule"),
])
def test_bad_settings_are_rejected_before_training(bad, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        run(_cfg(**bad), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_resume_from_mid_epoch_checkpoint_is_bitwise(tmp_path):
    cfg = _cfg(epochs=3, checkpoint_every=5, accumulate=2, optimizer="sgd", schedule="multistep", warmup_epochs=1.0)
    full = tmp_path / "full"
    run(cfg, full)
    # simulate a kill right after a mid-epoch checkpoint: train 3 epochs in one go, but restart
    # from the checkpoint written at step 5 (inside epoch 2 of 4 steps per epoch)
    part = tmp_path / "part"
    steps = []

    class Stop(Exception):
        pass

    def stop_after(record):
        steps.append(record)
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        run(cfg, part, on_epoch=stop_after)
    ck = torch.load(part / "checkpoint_last.pt", weights_only=True)
    assert ck["step"] == 5 and ck["batch"] > 0  # the mid-epoch one: the epoch-end save never happened
    run(cfg, part, resume=True)
    _assert_same_run(full, part)


def test_sup_tickets_run_resumes_exactly(tmp_path):
    cfg = _cfg(epochs=4, sup_tickets=True, cycles=2, cycle_epochs=1, method="dstee")
    full, part = tmp_path / "full", tmp_path / "part"
    a = run(cfg, full)
    count = []

    class Stop(Exception):
        pass

    def stop(record):
        count.append(record)
        if record["epoch"] == 3:  # inside the cycles: one ticket done
            raise Stop

    with pytest.raises(Stop):
        run(cfg, part, on_epoch=stop)
    b = run(cfg, part, resume=True)
    assert a["test_acc"] == b["test_acc"] and a["tickets"] == b["tickets"]
    assert a["ensemble_test_acc"] == b["ensemble_test_acc"]
    _assert_same_run(full, part)


def _train_cmd(out, extra=()):
    return [sys.executable, "-m", "sparsetrain", "train", "--out", str(out), "--model", "mlp", "--dataset",
            "synthetic", "--method", "set", "--density", "0.2", "--epochs", "40", "--batch-size", "32",
            "--hp", "update_interval=5", "--checkpoint-every", "7", "--threads", "1", "--no-progress", *extra]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    metrics = killed / "metrics.jsonl"
    while time.time() < deadline:  # kill once a few epochs are logged (mid-run, at an arbitrary point)
        if metrics.exists() and metrics.read_text().count('"type": "epoch"') >= 3:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "summary.json").exists()
    done = subprocess.run(_train_cmd(killed, ["--resume"]), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ref = tmp_path / "ref"
    done = subprocess.run(_train_cmd(ref), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_run(ref, killed)
    sa = json.loads((ref / "summary.json").read_text())
    sb = json.loads((killed / "summary.json").read_text())
    assert sa["test_acc"] == sb["test_acc"] and sa["curve"] == sb["curve"]


@pytest.mark.parametrize("execution", ["sparse", "auto"])
def test_truly_sparse_execution_trains_like_masked(execution, tmp_path):
    masked = run(_cfg(epochs=2))
    sparse = run(_cfg(epochs=2, execution=execution))
    # same seed, batches and masks: the same run up to float summation order
    assert sparse["updates"] == masked["updates"]
    assert sparse["itop_rate"] == masked["itop_rate"]
    assert abs(sparse["test_acc"] - masked["test_acc"]) <= 0.02
    assert sparse["train_flops_fraction"] == pytest.approx(masked["train_flops_fraction"])
    with pytest.raises(ValueError, match="execution"):
        run(_cfg(execution="csr"))
    assert masked["sparse_kernels"] is None


def test_the_kernel_choice_is_applied_and_recorded(tmp_path):
    from sparsetrain.sparse import kernels

    saved = kernels._state["backend"]
    try:
        r = run(_cfg(epochs=1, execution="sparse", kernels="torch"))
        assert r["sparse_kernels"] == "torch"
        if kernels.native_available():
            assert run(_cfg(epochs=1, execution="sparse", kernels="native"))["sparse_kernels"] == "native"
            # auto: per operation the faster of the two on this machine, measured and recorded
            auto = run(_cfg(epochs=1, execution="sparse", kernels="auto"))
            assert auto["sparse_kernels"] in ("native", "torch", "mixed")
            # every layer's forward choice is found (the first one's was looked up with evaluation's layout: None)
            assert all(c["spmm"] in ("native", "torch") for c in auto["kernel_choices"].values())
        with pytest.raises(ValueError, match="kernels"):
            run(_cfg(kernels="mkl"))
    finally:
        kernels._state["backend"] = saved


def test_bf16_amp_channels_last_and_label_smoothing_run(tmp_path):
    r = run(_cfg(model="lenet5", epochs=1, amp="bf16", channels_last=True, label_smoothing=0.1,
                 optimizer="adamw", lr=1e-3, schedule="constant"), tmp_path / "amp")
    assert r["density"] == pytest.approx(0.2, abs=1e-3) and r["updates"] > 0
    assert 0.0 <= r["test_acc"] <= 1.0 and r["test_loss"] == r["test_loss"]  # finite, not NaN


@pytest.mark.slow
def test_train_nproc_2_equals_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "sparsetrain", "train", "--model", "mlp", "--dataset", "synthetic", "--method",
            "rigl", "--density", "0.2", "--epochs", "2", "--batch-size", "64", "--hp", "update_interval=3",
            "--threads", "1", "--no-progress"]
    one = subprocess.run(base + ["--out", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(base + ["--out", str(tmp_path / "two"), "--nproc", "2"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _final_state(tmp_path / "one"), _final_state(tmp_path / "two")
    for n in a["sparsifier"]["layers"]:
        assert torch.equal(a["sparsifier"]["layers"][n]["mask"], b["sparsifier"]["layers"][n]["mask"])
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5), k
    sa = json.loads((tmp_path / "one" / "summary.json").read_text())
    sb = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert sa["updates"] == sb["updates"] > 0 and abs(sa["test_acc"] - sb["test_acc"]) < 0.01


def test_tensorboard_logs_are_written(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    run(_cfg(epochs=1), out, tensorboard=True)
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100


def test_run_directory_refuses_a_foreign_checkpoint_and_keeps_the_log_in_step(tmp_path):
    from sparsetrain.experiments.rundir import RunDirectory

    out = tmp_path / "r"
    run(_cfg(epochs=2), out)
    (out / "summary.json").unlink()  # as if killed after the last checkpoint
    with open(out / "metrics.jsonl", "a") as f:  # ... and after writing a line the checkpoint does not know
        f.write('{"type": "epoch", "epoch": 99}\n')
    d = RunDirectory(out)
    ckpt = d.prepare(_cfg(epochs=2), resume=True)
    assert ckpt["epoch"] == 2 and ckpt["metric_lines"] < len((out / "metrics.jsonl").read_text().splitlines())
    d.open(_cfg(epochs=2), ckpt, steps_per_epoch=8, total_steps=16)
    d.close()
    assert '"epoch": 99' not in (out / "metrics.jsonl").read_text()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == ckpt["metric_lines"]
    torch.save({"format": "something/else"}, out / "checkpoint_last.pt")
    with pytest.raises(ValueError, match="not a sparsetrain run checkpoint"):
        RunDirectory(out).prepare(_cfg(epochs=2), resume=True)


def test_resume_refuses_a_checkpoint_copied_from_a_run_with_other_settings(tmp_path):
    """Another run's checkpoint_last.pt (a job script copied the wrong file) used to be continued under this run's
    config.json, so its summary reported the other run's training under these settings."""
    import shutil

    from sparsetrain.experiments.rundir import RunDirectory

    a, b = tmp_path / "a", tmp_path / "b"
    run(_cfg(epochs=2, lr=0.1), a)
    run(_cfg(epochs=2, lr=0.001), b)
    (b / "summary.json").unlink()  # as if killed after the last checkpoint
    shutil.copy(a / "checkpoint_last.pt", b / "checkpoint_last.pt")
    (b / "checkpoint_prev.pt").unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"other settings than this directory's config.json \(lr: 0.1 in the "
                                         r"checkpoint, 0.001 here\): it comes from another run"):
        RunDirectory(b).prepare(_cfg(epochs=2, lr=0.001), resume=True)
    run(_cfg(epochs=2, lr=0.1), tmp_path / "c")
    (tmp_path / "c" / "summary.json").unlink()
    assert RunDirectory(tmp_path / "c").prepare(_cfg(epochs=2, lr=0.1), resume=True)["epoch"] == 2  # its own: fine


def test_a_run_saved_before_a_setting_existed_resumes_with_its_default(tmp_path):
    """A sweep resumed after the library gained a run setting: its config.json (and checkpoint) lack the key,
    which the run trained with at what is now the default; it was refused as "different settings"."""
    import json

    from sparsetrain.experiments.rundir import RunDirectory

    out = tmp_path / "r"
    run(_cfg(epochs=2), out)
    (out / "summary.json").unlink()
    meta = json.loads((out / "config.json").read_text())
    del meta["config"]["label_smoothing"]
    (out / "config.json").write_text(json.dumps(meta))
    assert RunDirectory(out).prepare(_cfg(epochs=2), resume=True)["epoch"] == 2
    with pytest.raises(ValueError, match="label_smoothing"):  # a non-default value is still a different setting
        RunDirectory(out).prepare(_cfg(epochs=2, label_smoothing=0.1), resume=True)
