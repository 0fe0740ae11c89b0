import json

import pytest

from sparsetrain import cli


def _result(method, density, seed, acc):
    return {"config": {"method": method, "density": density, "seed": seed}, "test_acc": acc, "density": density,
            "itop_rate": density, "train_flops_fraction": density, "inference_flops_fraction": density,
            "wall_time_s": 1.0}


def test_aggregate_mean_and_sample_std_over_seeds():
    rows = cli.aggregate([_result("rigl", 0.1, 0, 0.80), _result("rigl", 0.1, 1, 0.82), _result("dense", 1.0, 0, 0.9),
                          _result("set", 0.1, 0, 0.7)])
    assert [r["method"] for r in rows] == ["dense", "set", "rigl"]
    rigl = rows[2]
    assert rigl["seeds"] == 2 and rigl["acc_mean"] == pytest.approx(81.0)
    assert rigl["acc_std"] == pytest.approx(2 ** 0.5)
    table = cli.format_table(rows)
    assert "| rigl | 90% | 81.00 ± 1.41 | 2 |" in table


def test_compare_end_to_end_on_synthetic_data(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = cli.main(["compare", "--methods", "dense,set,rigl", "--densities", "0.2", "--seeds", "0",
                   "--dataset", "synthetic", "--epochs", "2", "--update-interval", "4", "--batch-size", "64", "--out", str(out)])
    assert rc == 0
    text = (out / "results.md").read_text()
    assert "| rigl | 80% |" in text and "| dense | 0% |" in text and "Command: `sparsetrain compare" in text
    run = json.loads((out / "runs" / "rigl-d0.2-s0.json").read_text())
    assert run["density"] == pytest.approx(0.2, abs=1e-3)
    assert run["updates"] > 0 and run["itop_rate"] > 0.2
    assert 0 < run["train_flops_fraction"] < 1
    assert (out / "results.csv").read_text().startswith("method,density,seeds")


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "demo" in capsys.readouterr().out


def test_report_aggregates_hand_made_run_directories(tmp_path):
    a, b = tmp_path / "a" / "runs", tmp_path / "b" / "runs"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    (a / "r0.json").write_text(json.dumps(_result("rigl", 0.05, 0, 0.80)))
    (a / "r1.json").write_text(json.dumps(_result("rigl", 0.05, 1, 0.84)))
    (b / "d0.json").write_text(json.dumps(_result("dense", 1.0, 0, 0.90)))
    (b / "junk.json").write_text("{not json")
    out = tmp_path / "rep"
    assert cli.main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    text = (out / "results.md").read_text()
    assert "| rigl | 95% | 82.00 ± 2.83 | 2 |" in text and "| dense | 0% | 90.00 | 1 |" in text
    assert "Protocol: not stated (name it with --protocol)" in text  # never a protocol the runs did not follow
    assert (out / "accuracy_vs_sparsity.png").stat().st_size > 1000
    assert cli.main(["report", str(tmp_path / "missing"), "--out", str(out)]) == 2  # a typo'd directory
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty"), "--out", str(out)]) == 2  # no results in it: an input error


def test_report_reads_the_protocol_line_from_the_runs_unless_named(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed in (0, 1):
        r = _result("rigl", 0.1, seed, 0.4)
        r["config"].update(model="gpt-mini", dataset="text:stdlib", epochs=10, batch_size=32, optimizer="adamw",
                           lr=1e-3, schedule="cosine")
        (runs / f"r{seed}.json").write_text(json.dumps(r))
    out = tmp_path / "rep"
    assert cli.main(["report", str(runs), "--out", str(out)]) == 0
    assert ("Protocol: gpt-mini on text:stdlib 10 epochs batch 32 adamw lr 0.001 cosine schedule (read from the "
            "runs' settings; name it with --protocol)") in (out / "results.md").read_text()
    assert cli.main(["report", str(runs), "--out", str(out), "--protocol", "text-gpt"]) == 0
    assert "Protocol: text-gpt\n" in (out / "results.md").read_text()
    # the Command line is the shell command that reproduces the table: arguments with spaces stay quoted
    assert cli.main(["report", str(runs), "--out", str(out), "--protocol", "text gpt, 10 epochs"]) == 0
    assert "--protocol 'text gpt, 10 epochs'`" in (out / "results.md").read_text()


def test_compare_resume_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--methods", "static", "--densities", "0.3", "--seeds", "0", "--dataset", "synthetic",
            "--epochs", "1", "--batch-size", "128", "--out", str(out)]
    assert cli.main(args) == 0
    first = (out / "runs" / "static-d0.3-s0.json").read_text()
    assert cli.main(args + ["--resume"]) == 0
    assert "already done, skipped" in capsys.readouterr().out
    assert (out / "runs" / "static-d0.3-s0.json").read_text() == first


def test_compare_builds_scored_static_masks_from_training_batches(tmp_path):
    out = tmp_path / "snip"
    rc = cli.main(["compare", "--methods", "snip,grasp,granet:initial_density=0.5", "--densities", "0.2", "--seeds", "0",
                   "--dataset", "synthetic", "--epochs", "1", "--batch-size", "64", "--update-interval", "2",
                   "--out", str(out)])
    assert rc == 0
    for tag in ("snip", "grasp", "granet:initial_density=0.5"):
        r = json.loads((out / "runs" / f"{tag}-d0.2-s0.json").read_text())
        assert r["density"] == pytest.approx(0.2, abs=2e-3), tag


def test_train_from_toml_config_with_flag_override_and_refusal_to_overwrite(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('model = "mlp"\ndataset = "synthetic"\nmethod = "dstee"\ndensity = 0.3\nepochs = 2\n'
                   'batch-size = 64\nthreads = 1\n[algorithm]\nupdate_interval = 4\nc = 0.01\n')
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(cfg), "--out", str(out), "--epochs", "3", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["epochs"] == 3 and summary["config"]["density"] == 0.3  # flag beats file
    assert summary["config"]["algorithm_kwargs"] == {"update_interval": 4, "c": 0.01}
    assert len(summary["curve"]) == 3 and summary["updates"] > 0
    assert cli.main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('modle = "mlp"\n')
    assert cli.main(["train", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "modle" in capsys.readouterr().err


def test_train_rejects_unknown_names_listing_valid_ones(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "x"), "--model", "resnet1000"]) == 2
    err = capsys.readouterr().err
    assert "unknown model" in err and "lenet5-caffe" in err
    assert not (tmp_path / "x").exists()


def test_sweep_refuses_bad_settings_before_any_run(tmp_path, capsys):
    out = tmp_path / "sw"
    argv = ["sweep", "--out", str(out), "--methods", "set,dstee:c=-1", "--densities", "0.2", "--seeds", "0",
            "--model", "mlp", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "64", "--hp",
            "update_interval=2"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "run dstee:c=-1-d0.2-s0" in err and "c must be" in err
    assert not any((out / "runs").glob("*/summary.json"))


def test_sweep_grid_skips_finished_runs_and_survives_a_failed_one(tmp_path, capsys, monkeypatch):
    from sparsetrain.experiments import grid

    real = grid.RunDirectories.run

    def flaky(self, cfg, tag, progress=False, on_epoch=None):  # a run that fails while training
        if tag.startswith("rigl"):
            raise RuntimeError("out of memory (simulated)")
        return real(self, cfg, tag, progress, on_epoch)

    monkeypatch.setattr(grid.RunDirectories, "run", flaky)
    out = tmp_path / "sw"
    argv = ["sweep", "--out", str(out), "--methods", "set,rigl", "--densities", "0.2", "--seeds", "0",
            "--grid", "lr=0.1,0.05", "--model", "mlp", "--dataset", "synthetic", "--epochs", "1",
            "--batch-size", "64", "--threads", "1", "--hp", "update_interval=2"]
    assert cli.main(argv) == 1  # the failing run is reported; the sweep goes on
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "out of memory" in captured.err
    runs = sorted(p.name for p in (out / "runs").iterdir() if (p / "summary.json").exists())
    assert runs == ["set-d0.2-s0-lr=0.05", "set-d0.2-s0-lr=0.1"]
    lrs = {json.loads((out / "runs" / r / "summary.json").read_text())["config"]["lr"] for r in runs}
    assert lrs == {0.1, 0.05}
    assert len((out / "failures.jsonl").read_text().splitlines()) == 2
    assert (out / "results.md").exists() and (out / "accuracy_vs_sparsity.png").exists()
    assert "(this command trained 2 of the 2 in " in (out / "results.md").read_text()
    assert cli.main(argv) == 1
    assert capsys.readouterr().out.count("done, skipped") == 2
    # a resume that trained nothing says so, not "this command 0.0 min"
    assert "this command trained none of them: all 2 were finished before it" in (out / "results.md").read_text()
    # a narrower sweep into the same directory says its report leaves the other runs out, and how to report all
    narrower = [a if a != "lr=0.1,0.05" else "lr=0.1" for a in argv]
    assert cli.main([a if a != "set,rigl" else "set" for a in narrower]) == 0
    err = capsys.readouterr().err
    assert "also holds 1 finished run(s) from another sweep" in err and f"sparsetrain report {out / 'runs'}" in err


def test_every_command_documents_its_flags_with_defaults(capsys):
    for cmd, flags in [("train", ["--label-smoothing", "--accumulate", "--amp", "--channels-last", "--resume",
                                  "--overwrite", "--schedule", "--warmup-epochs", "--sup-tickets", "--hp"]),
                       ("sweep", ["--grid", "--methods", "--densities", "--seeds"]),
                       ("report", ["--methods", "--densities"]), ("demo", ["--epochs"]), ("compare", ["--resume"])]:
        with pytest.raises(SystemExit):
            cli.main([cmd, "--help"])
        text = capsys.readouterr().out
        for f in flags:
            assert f in text, (cmd, f)
        assert "default" in text


def test_report_writes_every_plot(tmp_path):
    out = tmp_path / "sw"
    assert cli.main(["compare", "--methods", "dense,set,rigl", "--densities", "0.2,0.1", "--seeds", "0,1",
                     "--dataset", "synthetic", "--model", "mlp", "--epochs", "2", "--update-interval", "4",
                     "--batch-size", "64", "--out", str(out)]) == 0
    rep = tmp_path / "rep"
    assert cli.main(["report", str(out), "--out", str(rep), "--methods", "dense,rigl", "--densities", "0.1"]) == 0
    for name in ("accuracy_vs_sparsity", "learning_curves", "itop_rate", "turnover", "layer_density",
                 "accuracy_vs_itop_rate"):
        assert (rep / f"{name}.png").stat().st_size > 5000, name
    text = (rep / "results.md").read_text()
    assert "| rigl | 90% |" in text and "| set |" not in text and "80%" not in text


def test_sweep_from_yaml_config_with_grid_over_an_algorithm_hyperparameter(tmp_path):
    pytest.importorskip("yaml")
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("model: mlp\ndataset: synthetic\nepochs: 1\nbatch_size: 64\nthreads: 1\n"
                   "algorithm:\n  update_interval: 3\ngrid:\n  c: [0.0, 0.01]\n")
    out = tmp_path / "sw"
    assert cli.main(["sweep", "--config", str(cfg), "--out", str(out), "--methods", "dstee", "--densities", "0.2",
                     "--seeds", "0"]) == 0
    cs = sorted(json.loads(p.read_text())["config"]["algorithm_kwargs"]["c"] for p in out.glob("runs/*/summary.json"))
    assert cs == [0.0, 0.01]
    assert all(json.loads(p.read_text())["config"]["algorithm_kwargs"]["update_interval"] == 3
               for p in out.glob("runs/*/summary.json"))


def test_one_grid_plan_for_compare_and_sweep_orders_and_tags():
    from sparsetrain.experiments.grid import plan_runs

    base = {"epochs": 1, "algorithm_kwargs": {"update_interval": 5}}
    cmp_plan = plan_runs(["rigl", "dense", "set+sup-tickets"], [0.1, 0.05], [0, 1], base, dense_first=True)
    assert [p.tag for p in cmp_plan] == [
        "dense-d1-s0", "dense-d1-s1",
        "rigl-d0.1-s0", "rigl-d0.1-s1", "set+sup-tickets-d0.1-s0", "set+sup-tickets-d0.1-s1",
        "rigl-d0.05-s0", "rigl-d0.05-s1", "set+sup-tickets-d0.05-s0", "set+sup-tickets-d0.05-s1"]
    assert cmp_plan[2].settings == {"epochs": 1, "algorithm_kwargs": {"update_interval": 5}, "method": "rigl",
                                    "density": 0.1, "seed": 0}
    sweep_plan = plan_runs(["dense", "dstee"], [0.1], [0], base, {"lr": [0.1, 0.05], "c": [0.01]})
    assert [p.tag for p in sweep_plan] == ["dense-d1-s0-lr=0.1", "dense-d1-s0-lr=0.05",  # c is not dense's
                                           "dstee-d0.1-s0-lr=0.1-c=0.01", "dstee-d0.1-s0-lr=0.05-c=0.01"]
    s = sweep_plan[3].settings
    assert s["lr"] == 0.05 and s["algorithm_kwargs"] == {"update_interval": 5, "c": 0.01}  # a setting vs a hyper-parameter
    assert s["name"] == "dstee lr=0.05 c=0.01" and base["algorithm_kwargs"] == {"update_interval": 5}


def test_compare_without_resume_reruns_and_a_failing_run_stops_it(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--methods", "static", "--densities", "0.3", "--seeds", "0", "--dataset", "synthetic",
            "--epochs", "1", "--batch-size", "128", "--out", str(out)]
    assert cli.main(args) == 0
    assert cli.main(args) == 0
    assert "skipped" not in capsys.readouterr().out
    assert cli.main(args[:2] + ["static,magic"] + args[3:]) == 2  # compare stops at the first failure
    captured = capsys.readouterr()
    assert "unknown method 'magic'" in captured.err and not (out / "failures.jsonl").exists()


def test_parallel_sweep_gives_the_serial_results_and_labelled_arms_name_runs(tmp_path, capsys):
    """--jobs 2 trains two runs at once in worker processes; each run's summary equals the serial
    sweep's (same seeds, same batches); a LABEL=SPEC method names its rows and run directories."""
    common = ["--methods", "rigl,fast=rigl:update_interval=2:drop_schedule=constant", "--densities", "0.2",
              "--seeds", "0", "--model", "mlp", "--dataset", "synthetic", "--epochs", "2", "--batch-size", "64",
              "--threads", "1", "--hp", "update_interval=4"]
    assert cli.main(["sweep", "--out", str(tmp_path / "serial")] + common) == 0
    assert cli.main(["sweep", "--out", str(tmp_path / "par"), "--jobs", "2"] + common) == 0
    out = capsys.readouterr().out
    assert "started" in out and "| fast | 80% |" in out
    for tag in ("rigl-d0.2-s0", "fast-d0.2-s0"):
        a, b = (json.loads((tmp_path / d / "runs" / tag / "summary.json").read_text()) for d in ("serial", "par"))
        assert a["test_acc"] == b["test_acc"] and a["test_loss"] == b["test_loss"]
        assert a["update_history"] == b["update_history"]
    fast = json.loads((tmp_path / "par" / "runs" / "fast-d0.2-s0" / "summary.json").read_text())
    assert fast["label"] == "fast" and fast["config"]["method"] == "rigl:update_interval=2:drop_schedule=constant"
    assert fast["updates"] > json.loads((tmp_path / "par/runs/rigl-d0.2-s0/summary.json").read_text())["updates"]
    assert cli.main(["sweep", "--out", str(tmp_path / "x"), "--jobs", "0"] + common) == 2
    assert "--jobs" in capsys.readouterr().err


def test_split_label():
    from sparsetrain.experiments.grid import split_label

    assert split_label("dstee:c=0.01") == (None, "dstee:c=0.01")
    assert split_label("ref=rigl:end=none") == ("ref", "rigl:end=none")
    assert split_label("ref=rigl:end=none+sup-tickets") == ("ref+sup-tickets", "rigl:end=none+sup-tickets")
    with pytest.raises(ValueError, match="LABEL=SPEC"):
        split_label("=rigl")


def test_seed_major_plan_runs_every_arm_of_a_seed_first():
    from sparsetrain.experiments.grid import plan_runs

    plan = plan_runs(["rigl", "set"], [0.1, 0.05], [0, 1], {}, seed_major=True)
    assert [p.tag for p in plan] == ["rigl-d0.1-s0", "rigl-d0.05-s0", "set-d0.1-s0", "set-d0.05-s0",
                                     "rigl-d0.1-s1", "rigl-d0.05-s1", "set-d0.1-s1", "set-d0.05-s1"]


def test_baseline_flag_chooses_the_paired_reference_and_a_typo_trains_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed in (0, 1):
        (runs / f"set{seed}.json").write_text(json.dumps(_result("set", 0.05, seed, 0.80 + 0.01 * seed)))
        (runs / f"itop{seed}.json").write_text(json.dumps(_result("set-itop", 0.05, seed, 0.81 + 0.01 * seed)))
    out = tmp_path / "rep"
    assert cli.main(["report", str(runs), "--out", str(out), "--baseline", "set"]) == 0
    text = (out / "results.md").read_text()
    assert "## Paired differences from set" in text and "| set-itop | 95% | 2 |" in text
    assert cli.main(["report", str(runs), "--out", str(out), "--baseline", "rigl"]) == 2
    assert "--baseline 'rigl' is not one of these runs' methods (set, set-itop)" in capsys.readouterr().err
    # sweep and compare check it before the first run trains
    sw = tmp_path / "sw"
    assert cli.main(["sweep", "--out", str(sw), "--methods", "set,rigl", "--densities", "0.1", "--seeds", "0",
                     "--dataset", "synthetic", "--epochs", "1", "--baseline", "rigll"]) == 2
    assert "did you mean 'rigl'" in capsys.readouterr().err and not (sw / "runs").exists()
    assert cli.main(["compare", "--out", str(tmp_path / "c"), "--methods", "dense,set", "--densities", "0.1",
                     "--seeds", "0", "--dataset", "synthetic", "--epochs", "1", "--baseline", "rigl"]) == 2
    assert not list((tmp_path / "c").glob("runs/*.json"))


def test_compare_takes_hp_like_train_and_sweep(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--methods", "set", "--densities", "0.3", "--seeds", "0", "--dataset", "synthetic",
            "--epochs", "1", "--batch-size", "64", "--out", str(out)]
    assert cli.main(args + ["--hp", "update_interval=3", "--hp", "drop_fraction=0.5"]) == 0
    run = json.loads((out / "runs" / "set-d0.3-s0.json").read_text())
    assert run["config"]["algorithm_kwargs"] == {"update_interval": 3, "drop_fraction": 0.5}
    assert cli.main(args + ["--hp", "update_interval=3", "--update-interval", "4"]) == 2
    assert "disagree" in capsys.readouterr().err


def test_demo_takes_threads_and_checks_it_before_training(tmp_path, capsys):
    assert cli.main(["demo", "--threads", "0", "--out", str(tmp_path / "d")]) == 2
    assert "--threads must be an integer >= 1" in capsys.readouterr().err
    assert not list((tmp_path / "d").glob("runs/*.json"))
