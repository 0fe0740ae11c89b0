"""sparsetrain.experiments.grid: the progress lines of a grid say roughly how long is left."""

import re

from sparsetrain.experiments.grid import PlannedRun, ResultFiles, _TimeLeft, plan_runs, run_grid


def test_time_left_is_epochs_left_times_seconds_per_epoch_over_parallel_runs():
    todo = [(i, PlannedRun(f"r{i}", {"epochs": e})) for i, e in ((1, 10), (2, 10), (3, 20), (4, 40))]
    eta = _TimeLeft(todo, jobs=2)
    # 10 epochs in 600 s: 60 s per epoch; 70 epochs left, two at a time: 2100 s = 35 min
    assert eta.finished(1, {"wall_time_s": 600.0}) == "  [≈ 35 min left]"
    # a failed run teaches nothing about speed, and leaves 60 epochs: 30 min
    assert eta.finished(2, None) == "  [≈ 30 min left]"
    assert eta.finished(3, {"wall_time_s": 3000.0}) == "  [≈ 80 min left]"  # 120 s/epoch now, 40 epochs alone
    assert eta.finished(4, {"wall_time_s": 1.0}) == ""  # nothing left


def test_a_serial_grid_prints_the_time_left_after_each_run_but_the_last(tmp_path):
    lines = []
    plan = plan_runs(["set"], [0.2], [0, 1], {"model": "mlp", "dataset": "synthetic", "epochs": 1, "batch_size": 64,
                                              "algorithm_kwargs": {"update_interval": 3}, "threads": 1})
    results, failures = run_grid(plan, ResultFiles(tmp_path), echo=lambda text, end="\n": lines.append(text))
    assert len(results) == 2 and not failures
    done = [line for line in lines if line.startswith("[") and "acc " in line]
    assert re.search(r"\[≈ \d+ min left\]$", done[0]) and "left" not in done[1]


def test_dense_runs_once_per_value_of_the_grids_run_settings_only():
    # an algorithm hyper-parameter does not apply to dense: one dense run per seed, not one per value
    tags = [r.tag for r in plan_runs(["dense", "set"], [0.1], [0, 1], {}, grid={"drop_fraction": [0.3, 0.5]})]
    assert [t for t in tags if t.startswith("dense")] == ["dense-d1-s0", "dense-d1-s1"]
    assert len(tags) == 2 + 4
    mixed = plan_runs(["dense", "set"], [0.1], [0], {}, grid={"lr": [0.1, 0.2], "drop_fraction": [0.3, 0.5]})
    dense = [r for r in mixed if r.settings["method"] == "dense"]
    assert [r.tag for r in dense] == ["dense-d1-s0-lr=0.1", "dense-d1-s0-lr=0.2"]
    assert [r.settings["name"] for r in dense] == ["dense lr=0.1", "dense lr=0.2"]
    assert all("algorithm_kwargs" not in r.settings for r in dense)
