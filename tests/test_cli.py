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
    assert (out / "accuracy_vs_sparsity.png").stat().st_size > 1000
    assert cli.main(["report", str(tmp_path / "empty"), "--out", str(out)]) == 1


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
