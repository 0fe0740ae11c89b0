"""The report's provenance line: which commits, torch, CPU and threads made the runs, and their run
time summed over runs (true after a sweep resumed over sessions, unlike the reporting command's time);
the plots' order and colours for a grid's variants."""

import re
import subprocess

import pytest

from sparsetrain.experiments import report, runner
from sparsetrain.experiments.report import git_commit, loaded_commit, provenance, write_report
from sparsetrain.experiments.runner import RunConfig, run


def _result(seed, acc, commit=None, cpu=None, wall=600.0):
    versions = {"sparsetrain": "0.1.0", "torch": "2.13.0+cpu"}
    if commit:
        versions["commit"] = commit
    if cpu:
        versions["cpu"] = cpu
    return {"config": {"method": "rigl", "density": 0.1, "seed": seed, "threads": 1, "model": "mlp",
                       "dataset": "synthetic", "epochs": 1},
            "label": "rigl", "test_acc": acc, "wall_time_s": wall, "versions": versions, "density": 0.1,
            "itop_rate": 0.2, "train_flops_fraction": 0.1, "inference_flops_fraction": 0.1}


def test_the_runs_commits_are_counted_not_replaced_by_the_reporters():
    rs = [_result(0, 0.8, "aaa1111", "EPYC"), _result(1, 0.8, "aaa1111", "EPYC"), _result(2, 0.8, "bbb2222", "EPYC")]
    line = provenance(rs, commit="ccc3333")
    assert "runs at aaa1111 (2 runs), bbb2222 (1 run); report at ccc3333" in line
    assert "EPYC, 1 thread(s) per run" in line and "torch 2.13.0+cpu" in line
    assert "run time 30.0 min summed over 3 runs" in line and "this command" not in line
    # one commit for all: no counts; runs from before commits were recorded say so
    assert "runs at aaa1111; report" in provenance(rs[:2], commit="c")
    mixed = provenance(rs + [_result(3, 0.8)], commit="c")
    assert "commits not recorded (1 run)" in mixed and "CPU not recorded (1 run)" in mixed
    assert provenance([_result(0, 0.8)], commit="c").startswith("Commit: the runs’ commits not recorded; report at c")


def test_a_resumed_sweep_reports_the_runs_time_and_the_commands_time_beside_it(tmp_path):
    rs = [_result(s, 0.8, "aaa1111", wall=3600.0) for s in range(3)]
    write_report(tmp_path, rs, "sparsetrain sweep ...", "t", "p", wall=2.0, commit="ccc3333")
    text = (tmp_path / "results.md").read_text()
    assert "run time 3.0 h summed over 3 runs (this command 0.0 min)" in text
    write_report(tmp_path, rs, "sparsetrain sweep ...", "t", "p", wall=90.0, commit="c", trained=1)
    assert "summed over 3 runs (this command trained 1 of the 3 in 1.5 min)" in (tmp_path / "results.md").read_text()
    write_report(tmp_path, rs, "sparsetrain sweep ...", "t", "p", wall=2.0, commit="c", trained=0)
    assert "(this command trained none of them: all 3 were finished before it)" in (tmp_path / "results.md").read_text()


def test_git_commit_names_the_checkout_and_marks_modified_sources():
    commit = git_commit()
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=__file__.rsplit("/", 2)[0]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        assert commit == "unknown"
        return
    assert re.fullmatch(re.escape(head) + r"(\+modified)?", commit)


def test_a_run_records_the_commit_its_process_loaded_and_its_cpu(tmp_path, monkeypatch):
    loaded = loaded_commit()
    # the checkout moves on (a commit, an edit) while a long sweep's workers still run the code they loaded
    monkeypatch.setattr(report, "git_commit", lambda: "later99+modified")
    monkeypatch.setattr(runner, "git_commit", report.git_commit, raising=False)
    r = run(RunConfig(model="mlp", dataset="synthetic", method="rigl", density=0.2, epochs=1, batch_size=64,
                      algorithm_kwargs={"update_interval": 3}, threads=1), tmp_path / "run")
    assert r["versions"]["commit"] == loaded == loaded_commit() != "later99+modified"
    assert r["versions"]["cpu"] and r["versions"]["threads"] == 1


def test_plots_order_a_grids_variants_as_numbers_and_shade_one_hue_per_arm():
    import colorsys

    pytest.importorskip("matplotlib")
    from sparsetrain.experiments.report import _colors, _ordered

    labels = ["rigl epochs=120", "set epochs=30", "rigl epochs=30", "rigl epochs=60", "set epochs=120"]
    assert _ordered(labels) == ["rigl epochs=30", "rigl epochs=60", "rigl epochs=120", "set epochs=30",
                                "set epochs=120"]
    rs = [dict(_result(0, 0.8), label=lab) for lab in labels] + [dict(_result(0, 0.9), label="dense")]
    rs[-1]["config"] = dict(rs[-1]["config"], method="dense")
    colors = _colors(rs)
    assert "dense" not in colors and set(colors) == set(labels)
    hls = {lab: colorsys.rgb_to_hls(*colors[lab][:3]) for lab in labels}
    # one hue per arm, two arms two hues; shorter runs lighter
    assert abs(hls["rigl epochs=30"][0] - hls["rigl epochs=120"][0]) < 1e-6
    assert abs(hls["rigl epochs=30"][0] - hls["set epochs=30"][0]) > 0.05
    assert hls["rigl epochs=30"][1] > hls["rigl epochs=60"][1] > hls["rigl epochs=120"][1]


def test_runs_are_read_once_and_different_lengths_are_warned(tmp_path, capsys):
    import json

    from sparsetrain.errors import InputWarning
    from sparsetrain.experiments.report import load_runs, one_setup

    for seed in range(2):
        d = tmp_path / "sw" / "runs" / f"rigl-s{seed}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(_result(seed, 0.8)))
    # the same directory twice, or a directory and one inside it: each run once
    assert len(load_runs([str(tmp_path / "sw"), str(tmp_path / "sw"), str(tmp_path / "sw" / "runs")])) == 2
    longer = dict(_result(2, 0.8), config={**_result(2, 0.8)["config"], "epochs": 3})
    with pytest.warns(InputWarning, match=r"different epoch counts \(1, 3\)"):
        one_setup(load_runs([str(tmp_path / "sw")]) + [longer], None, None)
    from sparsetrain import cli

    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "rep")]) == 2  # an input error
    assert "sparsetrain report: error: no run results found under" in capsys.readouterr().err


def test_the_ticket_table_selects_no_ticket_on_the_test_set():
    """Per Sup-tickets run: superposed (the output), live model (= the last ticket), the tickets' mean,
    the ensemble; mean ± sd over seeds. The best ticket (chosen by test accuracy) is not a column."""
    rs = []
    for seed, (accs, out) in enumerate([([0.80, 0.90, 0.70], 0.85), ([0.82, 0.92, 0.72], 0.87)]):
        r = _result(seed, out)
        r.update(label="rigl+sup-tickets", live_test_acc=accs[-1], ensemble_test_acc=0.86,
                 tickets=[{"ticket_acc": a, "density_before": 0.15, **({"overlap_prev": 0.5} if i else {})}
                          for i, a in enumerate(accs)])
        rs.append(r)
    rows = report.ticket_table(rs).splitlines()
    assert "mean ticket" in rows[0] and "best" not in rows[0]
    cells = [c.strip() for c in rows[2].split("|")[1:-1]]
    assert cells[:6] == ["rigl+sup-tickets", "90%", "86.00 ± 1.41", "71.00 ± 1.41", "81.00 ± 1.41", "86.00 ± 0.00"]
    assert cells[6:] == ["3", "0.500", "0.1500"]
    assert report.ticket_table([_result(0, 0.8)]) == ""  # no Sup-tickets runs: no table


def test_a_row_never_counts_a_seed_twice_and_warns_when_its_runs_differ():
    """A compare and a sweep written to one directory gave one row "61.00 ± 30.95, seeds 2" from two seed-0 runs
    trained with different batch sizes and data, without a word."""
    import warnings

    from sparsetrain.errors import InputError, InputWarning
    from sparsetrain.experiments.report import check_rows

    def with_(seed, acc, **kw):
        r = _result(seed, acc)
        return dict(r, config={**r["config"], **kw})

    with pytest.raises(InputError, match=r"2 runs of rigl at density 0.1 have seed 0 with different batch_size: a "
                                         r"table row averages seeds"):
        check_rows([_result(0, 0.9), with_(0, 0.3, batch_size=256)])
    # a setting an older version did not record counts as its default (batch_size 128)
    with pytest.warns(InputWarning, match=r"the rigl runs at density 0.1 differ in batch_size: \['128', '256'\]"):
        check_rows([_result(0, 0.9), with_(1, 0.3, batch_size=256)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(check_rows([_result(0, 0.9), with_(1, 0.8, batch_size=128), with_(2, 0.8, threads=2)])) == 3
        # the same run recorded twice (two compares' dense runs): kept once
        assert len(check_rows([_result(0, 0.9), _result(0, 0.9), _result(1, 0.8)])) == 2
    # the same settings but another result (another commit) or execution: not the same run
    with pytest.raises(InputError, match=r"seed 0 with different result \(commit\?\)"):
        check_rows([_result(0, 0.9), _result(0, 0.42)])
    with pytest.raises(InputError, match=r"seed 0 with different execution"):
        check_rows([_result(0, 0.9), with_(0, 0.9, execution="sparse")])
