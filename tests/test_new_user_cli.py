"""A new user's mistakes with the command line: each is one clear ``error:`` line (or a warning),
never a traceback, a silently ignored setting or a wrong table."""

import json
import re
import warnings

import pytest

from sparsetrain import cli
from sparsetrain.errors import InputError, InputWarning
from sparsetrain.experiments.config import RunConfig
from sparsetrain.experiments.grid import plan_runs
from sparsetrain.experiments.rundir import RunDirectory

# 4 synthetic batches of 64, 1 epoch, RigL every step: a run of a few seconds
_SYN = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "1", "--batch-size", "64", "--train-subset", "256",
        "--hp", "update_interval=1", "--no-progress"]


def _error(capsys, argv, *words):
    """``argv`` fails with one ``error:`` line (exit 2, no traceback) matching every regex in ``words``."""
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, err
    for w in words:
        assert re.search(w, lines[0]), (w, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------ --out
@pytest.mark.parametrize("command", ["train", "sweep", "compare", "report"])
def test_an_out_that_is_a_file_or_below_one_is_one_error_line(tmp_path, capsys, command):
    f = tmp_path / "afile"
    f.write_text("x")
    extra = {"train": _SYN, "sweep": ["--dataset", "synthetic"], "compare": ["--dataset", "synthetic"],
             "report": [str(tmp_path)]}[command]
    for out in (f, f / "sub"):
        _error(capsys, [command, *extra, "--out", str(out)], "--out", str(f), "not a directory")
    assert f.read_text() == "x"


# ------------------------------------------------------------------------------------ train flags
@pytest.mark.parametrize("flags", [["--resume", "--overwrite"], ["--extend", "--overwrite"]])
def test_contradictory_run_directory_flags_are_refused(tmp_path, capsys, flags):
    _error(capsys, ["train", *_SYN, "--out", str(tmp_path / "r"), *flags], "--overwrite", "--resume|--extend")
    assert not (tmp_path / "r").exists()


def test_a_damaged_config_json_is_one_error_line(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    for text in ("{", "{}", "[1]"):
        (out / "config.json").write_text(text)
        for flag in ("--resume", "--extend"):
            _error(capsys, ["train", *_SYN, "--out", str(out), flag, "--epochs", "2"],
                   "config.json", "damaged|not a run", "--overwrite")


def test_an_unreadable_checkpoint_says_so_without_torch_internals(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "checkpoint_last.pt").write_text("garbage")
    with pytest.raises(InputError) as e:
        RunDirectory(out).checkpoint()
    msg = str(e.value)
    assert "checkpoint_last.pt" in msg and "not a torch checkpoint" in msg and "weights_only" not in msg


def test_resuming_a_finished_run_says_it_was_finished(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["train", *_SYN, "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "already finished" not in first and "at density 0.1" in first
    assert cli.main(["train", *_SYN, "--out", str(out), "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out


def test_resume_and_extend_need_only_the_run_directory(tmp_path, capsys):
    # --resume used to need every flag of the run typed again (defaults differ: "different settings")
    out = tmp_path / "r"
    assert cli.main(["train", *_SYN, "--out", str(out), "--hp", "c=0.01", "--method", "dstee"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert cli.main(["train", "--out", str(out), "--extend", "--epochs", "2", "--no-progress"]) == 0
    assert "dstee" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["epochs"] == 2 and saved["algorithm_kwargs"] == {"update_interval": 1, "c": 0.01}
    _error(capsys, ["train", "--out", str(out), "--resume", "--lr", "0.5"], "different settings", "lr")
    again = tmp_path / "again"  # a run's config.json is a config file: the same settings in a new run
    assert cli.main(["train", "--config", str(out / "config.json"), "--out", str(again), "--epochs", "1"]) == 0
    assert "warning" not in capsys.readouterr().err  # its settings were written out, not typed: none "has no effect"
    cfg = json.loads((again / "config.json").read_text())["config"]
    assert {k: v for k, v in cfg.items() if k != "epochs"} == {k: v for k, v in saved.items() if k != "epochs"}


def test_resume_of_a_directory_with_no_run_says_a_new_one_starts(tmp_path, capsys):
    # a typo in --out used to start a default run silently; a requeued job's first start needs it to work
    out = tmp_path / "typo"
    assert cli.main(["train", *_SYN, "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"warning: --resume: .*typo holds no run yet.*new run starts.*check --out", err), err
    assert cli.main(["train", *_SYN, "--out", str(out), "--resume"]) == 0  # now it exists: no warning
    assert "holds no run" not in capsys.readouterr().err


def test_a_dense_run_is_not_reported_at_a_density(tmp_path, capsys):
    assert cli.main(["train", *_SYN, "--method", "dense", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "dense: acc" in out and "at density" not in out


# ------------------------------------------------------------------------------------ config files
def test_a_grid_table_in_a_train_config_is_warned_about(tmp_path, capsys, monkeypatch):
    import sparsetrain.experiments.runner as runner

    monkeypatch.setattr(runner, "run", lambda *a, **k: (_ for _ in ()).throw(InputError("stop here")))
    cfg = tmp_path / "run.toml"
    cfg.write_text("[grid]\nlr = [0.1, 0.2]\n")
    assert cli.main(["train", *_SYN, "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"warning: .*\[grid\].*sweep", err), err


def test_yaml_scientific_numbers_are_numbers(tmp_path):
    pytest.importorskip("yaml")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lr: 1e-3\nweight_decay: 5E-4\nname: 1e-3x\nalgorithm:\n  c: 1e-2\n  drop_fraction: .5e+0\n")
    data = cli.load_config(cfg)
    assert data["lr"] == 1e-3 and data["weight_decay"] == 5e-4 and data["name"] == "1e-3x"
    assert data["algorithm"] == {"c": 1e-2, "drop_fraction": 0.5}


# ------------------------------------------------------------------------------------ data sizes
def test_a_train_subset_or_batch_larger_than_the_data_is_warned_about():
    from sparsetrain.experiments.build import build_loaders

    cfg = RunConfig(dataset="synthetic", model="mlp", train_subset=100_000, batch_size=100_000)
    with pytest.warns(InputWarning) as rec:
        train, _, _, _ = build_loaders(cfg)
    text = " ".join(str(w.message) for w in rec)
    assert "--train-subset 100000" in text and "--batch-size 100000" in text and "512" in text
    assert len(train) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        build_loaders(RunConfig(dataset="synthetic", model="mlp", train_subset=512, batch_size=512))


# ------------------------------------------------------------------------------------ sweep
@pytest.mark.parametrize("methods, seeds, words", [
    ("rigl,rigl", "0", ["rigl-d0.1-s0", "twice"]),
    ("a=rigl,a=set", "0", ["a-d0.1-s0", "twice", "label"]),
    ("rigl", "0,0", ["--seeds lists the seed 0 twice"]),
])
def test_a_grid_with_the_same_run_twice_is_refused(tmp_path, capsys, methods, seeds, words):
    _error(capsys, ["sweep", "--dataset", "synthetic", "--methods", methods, "--densities", "0.1", "--seeds", seeds,
                    "--out", str(tmp_path / "g")], *words)
    assert not (tmp_path / "g" / "runs").exists()


def test_plan_runs_refuses_duplicate_tags():
    with pytest.raises(InputError, match="twice"):
        plan_runs(["set", "set"], [0.1], [0], {})
    # a repeated density, seed or grid value is named as such, not blamed on the method
    with pytest.raises(InputError, match="--densities lists the density 0.1 twice"):
        plan_runs(["rigl"], [0.1, 0.05, 0.1], [0], {})
    with pytest.raises(InputError, match=r"--grid update_interval=\.\.\. lists the grid value of update_interval 2 "):
        plan_runs(["rigl"], [0.1], [0], {}, grid={"update_interval": [2, 2]})
    assert len(plan_runs(["rigl", "rigl+sup-tickets", "r=rigl:end=0.5", "r=rigl:end=0.5+sup-tickets"],
                         [0.1], [0], {})) == 4


@pytest.mark.parametrize("command", ["sweep", "compare"])
@pytest.mark.parametrize("flag", ["--methods", "--densities", "--seeds"])
def test_an_empty_list_is_refused(tmp_path, capsys, command, flag):
    _error(capsys, [command, "--dataset", "synthetic", flag, ",", "--out", str(tmp_path / "g")], flag)


# ------------------------------------------------------------------------------------ report
def _summary(dataset, model, method, seed, acc):
    return {"config": {"dataset": dataset, "model": model, "method": method, "density": 0.1, "seed": seed},
            "test_acc": acc, "density": 0.1, "itop_rate": 0.1, "train_flops_fraction": 0.1,
            "inference_flops_fraction": 0.1, "wall_time_s": 1.0}


def test_report_refuses_to_average_runs_of_different_setups_and_filters_them(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, (ds, model) in enumerate([("fashion-mnist", "lenet300-100"), ("fmnist", "lenet300-100"),
                                     ("text:stdlib", "gpt-mini")]):
        (runs / f"r{i}.json").write_text(json.dumps(_summary(ds, model, "rigl", i, 0.8)))
    _error(capsys, ["report", str(tmp_path), "--out", str(tmp_path / "rep")],
           "fashion-mnist/lenet300-100 \\(2 runs\\)", "text:stdlib/gpt-mini \\(1 run\\)", "--dataset", "--model")
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path / "rep"), "--dataset", "fashion-mnist"]) == 0
    assert "| rigl | 90% | 80.00 ± 0.00 | 2 |" in (tmp_path / "rep" / "results.md").read_text()
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path / "rep2"), "--model", "gpt-mini"]) == 0
    assert "| rigl | 90% | 80.00 | 1 |" in (tmp_path / "rep2" / "results.md").read_text()


def test_report_filters_match_arms_of_grid_sweeps_and_say_what_there_is_when_nothing_matches(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, epochs in enumerate((30, 60)):  # a --grid sweep labels its runs "rigl epochs=30"
        r = _summary("fashion-mnist", "lenet300-100", "rigl", 0, 0.8 + i / 100)
        r["label"] = f"rigl epochs={epochs}"
        (runs / f"r{i}.json").write_text(json.dumps(r))
    (runs / "dense.json").write_text(json.dumps(
        {**_summary("fashion-mnist", "lenet300-100", "dense", 0, 0.9), "density": 1.0,
         "config": {"dataset": "fashion-mnist", "model": "lenet300-100", "method": "dense", "density": 1.0,
                    "seed": 0}}))
    assert cli.main(["report", str(runs), "--out", str(tmp_path / "a"), "--methods", "rigl"]) == 0
    assert "rigl epochs=60" in (tmp_path / "a" / "results.md").read_text()
    assert cli.main(["report", str(runs), "--out", str(tmp_path / "b"), "--methods", "rigl epochs=60"]) == 0
    assert "rigl epochs=30" not in (tmp_path / "b" / "results.md").read_text()
    for flags in (["--methods", "set"], ["--densities", "0.05"]):  # dense alone is not a match for 0.05
        capsys.readouterr()
        assert cli.main(["report", str(runs), "--out", str(tmp_path / "c"), *flags]) == 1
        err = capsys.readouterr().err
        assert "none of the 3 runs" in err and "methods dense, rigl; densities 0.1" in err, err
        assert "fashion-mnist/lenet300-100" in err


def test_report_without_matplotlib_says_the_plots_were_skipped(tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *a, **k)

    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "r.json").write_text(json.dumps(_summary("synthetic", "mlp", "rigl", 0, 0.5)))
    monkeypatch.setattr(builtins, "__import__", no_mpl)
    assert cli.main(["report", str(runs), "--out", str(tmp_path / "rep")]) == 0
    assert "matplotlib" in capsys.readouterr().err
    assert (tmp_path / "rep" / "results.md").exists()


@pytest.mark.parametrize("command, words", [("train", "--resume continues it exactly"),
                                            ("sweep", "finished runs are skipped")])
def test_ctrl_c_is_one_line_saying_how_to_continue(tmp_path, capsys, monkeypatch, command, words):
    import sparsetrain.experiments.runner as runner

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", interrupted)
    extra = _SYN if command == "train" else ["--dataset", "synthetic", "--methods", "dense", "--seeds", "0"]
    assert cli.main([command, *extra, "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and words in err and "Traceback" not in err, err


def test_more_jobs_than_cores_is_warned_about(tmp_path, capsys):
    import os

    jobs = (os.cpu_count() or 1) + 1
    assert cli.main(["sweep", "--dataset", "synthetic", "--methods", "rigl:foo=1", "--jobs", str(jobs),
                     "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert f"warning: --jobs {jobs} is more than the" in err and "'foo'" in err
