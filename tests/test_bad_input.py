"""The catalogue of bad inputs (docs/errors.md), executable: each case gives one bad input through the
Python API or the command line and checks the exception or warning type AND that the message
names the setting and says how to fix it. Nothing a user typed may be silently ignored."""

import io
import json
import re
import warnings

import pytest
import torch
from torch import nn

import sparsetrain as st
from sparsetrain import cli
from sparsetrain.errors import InputError, InputTypeError, InputWarning, ScheduleWarning


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _train(model, opt, steps):
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 8)).pow(2).sum().backward()
        opt.step()


def _says(text, *words):
    """``text`` names every one of ``words`` (case-insensitive regexes)."""
    for w in words:
        assert re.search(w, str(text), re.I), f"{w!r} not in: {text}"


# ---------------------------------------------------------------------------------------------- algorithm values
@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(density=True), InputTypeError, ["density", r"density=0\.1"]),
    (dict(density="0.1"), InputTypeError, ["density", "number"]),
    (dict(density=1.5), InputError, ["density", r"\(0, 1\]", r"density=0\.1"]),
    (dict(density=0.1, end=1.5), InputError, ["end=1.5", r"end=0\.75"]),
    (dict(density=0.1, end=True), InputTypeError, ["end", "fraction"]),
    (dict(density=0.1, update_interval=1.5), InputError, ["update_interval", ">= 1"]),
    (dict(density=0.1, update_interval=True), InputError, ["update_interval"]),
    (dict(density=0.1, start=-1), InputError, ["start", ">= 0"]),
    (dict(density=0.1, seed=1.7), InputError, ["seed", "integer"]),
    (dict(density=0.1, drop_fraction=True), InputTypeError, ["drop_fraction", r"\[0, 1\]"]),
    (dict(density=0.1, erk_power=-1), InputError, ["erk_power", ">= 0"]),
    (dict(density=0.1, distribution="ekr"), InputError, ["distribution", "erk"]),
])
def test_algorithm_refuses_bad_values(kwargs, exc, words):
    with pytest.raises(exc) as info:
        st.RigL(**kwargs)
    _says(info.value, *words)


def test_input_errors_are_value_errors_so_old_handlers_still_catch_them():
    with pytest.raises(ValueError):
        st.RigL(density=2.0)
    with pytest.raises(TypeError):
        st.RigL(density=True)


# ---------------------------------------------------------------------------------------------- runs that cannot do what they say
def test_no_update_fits_in_the_run_warns_that_it_would_be_static():
    model, opt = _mlp()
    with pytest.warns(ScheduleWarning) as rec:
        st.Sparsifier(model, opt, "rigl", density=0.1, total_steps=16)
    _says(rec[0].message, "RigL", "no topology update", "update_interval=100", "total_steps=16", "static",
          "lower update_interval", "update_interval=2 fits 5 updates by step 11")  # a value that works


def test_start_after_end_warns_that_no_update_fits():
    model, opt = _mlp()
    with pytest.warns(ScheduleWarning) as rec:
        st.Sparsifier(model, opt, "set", density=0.1, total_steps=1000, update_interval=10, start=900)
    _says(rec[0].message, "start=900", "end=0.75", "static")


def test_end_past_the_run_warns_and_names_the_fix():
    model, opt = _mlp()
    with pytest.warns(InputWarning) as rec:  # end as a step count of a longer run (epochs mixed up)
        st.Sparsifier(model, opt, "rigl", density=0.1, total_steps=1000, update_interval=10, end=5000)
    _says(rec[0].message, "end=5000", "past the end of the run", "total_steps=1000", "p=0.271", "end=0.75", "end=None")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        st.Sparsifier(*_mlp(), "rigl", density=0.1, total_steps=1000, update_interval=10, end=1000)
        st.Sparsifier(*_mlp(), "rigl", density=0.1, total_steps=1000, update_interval=10, end=1010)  # no update lost


def test_a_constructor_that_fails_does_not_warn_about_its_schedule_first():
    # the schedule warning used to come out before the error, about a Sparsifier that never existed
    model, _ = _mlp()
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="not held by the optimizer"):
            st.Sparsifier(model, other, "rigl", density=0.1, total_steps=16)


def test_a_run_with_updates_does_not_warn():
    model, opt = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        st.Sparsifier(model, opt, "rigl", density=0.1, total_steps=100, update_interval=10)


def test_training_past_total_steps_warns_once():
    model, opt = _mlp()
    sp = st.Sparsifier(model, opt, "rigl", density=0.5, total_steps=4, update_interval=1, end=1.0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _train(model, opt, 7)
    past = [w for w in rec if issubclass(w.category, InputWarning)]
    assert len(past) == 1 and sp.step == 7
    _says(past[0].message, "step 5", "total_steps=4", "real run length")


@pytest.mark.parametrize("total, words", [(1.5, ["total_steps", "whole number"]), (True, ["total_steps"]),
                                          (0, ["total_steps", "positive"])])
def test_total_steps_must_be_a_positive_whole_number(total, words):
    model, opt = _mlp()
    with pytest.raises(InputError) as info:
        st.Sparsifier(model, opt, "rigl", density=0.1, total_steps=total)
    _says(info.value, *words, r"len\(loader\) \* epochs")


def test_flags_must_be_bools():
    model, opt = _mlp()
    with pytest.raises(InputTypeError) as info:
        st.Sparsifier(model, opt, "rigl", density=0.1, total_steps=100, track_usage="no")
    _says(info.value, "track_usage", "True or False")


# ---------------------------------------------------------------------------------------------- a second sparsifier
def test_a_second_sparsifier_on_the_same_weights_is_refused_naming_remove():
    model, opt = _mlp()
    first = st.Sparsifier(model, opt, "rigl", density=0.1, total_steps=100, update_interval=10)
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1)  # the re-run cell builds a new optimizer
    with pytest.raises(RuntimeError) as info:
        st.Sparsifier(model, opt2, "rigl", density=0.5, total_steps=100, update_interval=10)
    _says(info.value, "already sparsified", r"\.remove\(\)")
    first.remove()  # the documented way out
    second = st.Sparsifier(model, opt2, "rigl", density=0.5, total_steps=100, update_interval=10)
    _train(model, opt2, 3)
    assert second.density == pytest.approx(0.5, abs=0.02)
    st.testing.assert_invariants(second, opt2)  # only the second one's hooks act now


# ---------------------------------------------------------------------------------------------- checkpoints
def _state(**kw):
    model, opt = _mlp()
    sp = st.Sparsifier(model, opt, kw.pop("algorithm", "dstee"), density=kw.pop("density", 0.3), total_steps=100,
                       update_interval=kw.pop("update_interval", 2), **kw)
    _train(model, opt, 5)
    state = sp.state_dict()
    sp.remove()
    return state


def _fresh(**kw):
    model, opt = _mlp()
    return st.Sparsifier(model, opt, kw.pop("algorithm", "dstee"), density=kw.pop("density", 0.3), total_steps=100,
                         update_interval=kw.pop("update_interval", 2), **kw)


@pytest.mark.parametrize("saved, now, words", [
    (dict(density=0.1), dict(density=0.3), [r"density=0\.1", r"0\.3"]),
    (dict(update_interval=5), dict(update_interval=2), ["update_interval=5"]),
    (dict(algorithm="set"), dict(algorithm="dstee"), ["algorithm 'set'"]),
])
def test_a_state_of_another_configuration_is_refused(saved, now, words):
    state, sp = _state(**saved), _fresh(**now)
    before = {n: m.clone() for n, m in sp.masks.items()}
    with pytest.raises(InputError) as info:
        sp.load_state_dict(state)
    _says(info.value, *words, "strict=False")
    assert all(torch.equal(before[n], m) for n, m in sp.masks.items())  # nothing changed


def test_strict_false_loads_another_configuration_with_a_warning():
    state, sp = _state(density=0.1), _fresh(density=0.3)
    with pytest.warns(InputWarning) as rec:
        sp.load_state_dict(state, strict=False)
    _says(rec[0].message, r"density=0\.1", "strict=False")
    assert sp.density == pytest.approx(0.1, abs=0.02)


def test_a_byte_corrupted_state_is_detected_by_its_checksum():
    state = _state()
    counter = state["layers"]["0.weight"]["counter"]
    buf = io.BytesIO()
    torch.save(state, buf)
    raw = bytearray(buf.getvalue())
    at = raw.find(bytes(counter.contiguous().untyped_storage()))
    assert at > 0
    raw[at + 5] ^= 0x40  # one flipped bit in DST-EE's usage counters
    damaged = torch.load(io.BytesIO(bytes(raw)), weights_only=True)
    with pytest.raises(InputError) as info:
        _fresh().load_state_dict(damaged)
    _says(info.value, "corrupt", "checksum", "intact checkpoint")


def test_a_state_without_checksum_still_loads():
    state = _state()
    del state["checksum"]  # as written before the checksum existed
    sp = _fresh()
    sp.load_state_dict(state)
    assert sp.step == 5


def test_a_mask_of_the_wrong_shape_leaves_the_sparsifier_untouched():
    state = _state()
    state["layers"]["2.weight"]["mask"] = torch.ones(3, 3, dtype=torch.bool)
    sp = _fresh()
    before = {n: m.clone() for n, m in sp.masks.items()}
    with pytest.raises(InputError) as info:
        sp.load_state_dict(state)
    _says(info.value, "mask of 2.weight", r"\[4, 16\]", "intact checkpoint")
    assert sp.step == 0 and all(torch.equal(before[n], m) for n, m in sp.masks.items())


def test_another_total_steps_loads_with_a_warning():
    state = _state()
    model, opt = _mlp()
    sp = st.Sparsifier(model, opt, "dstee", density=0.3, total_steps=200, update_interval=2)
    with pytest.warns(InputWarning) as rec:
        sp.load_state_dict(state)
    _says(rec[0].message, "total_steps=100", "total_steps=200")
    assert sp.total_steps == 200


# ---------------------------------------------------------------------------------------------- the command line
_SYN = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "1", "--batch-size", "128"]


def _cli_error(capsys, argv, *words):
    """``argv`` fails with one ``error:`` line (exit 2, no traceback) naming ``words``."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, err
    _says(lines[0], *words)
    return lines[0]


@pytest.mark.parametrize("extra, words", [
    (["--hp", "foo=1"], ["'foo'", "valid", "update_interval"]),
    (["--method", "rigl:foo=1"], ["'foo'", "rigl", "valid"]),
    (["--hp", "end=1.5"], ["end=1.5", r"end=0\.75"]),
    (["--hp", "nokeyvalue"], ["--hp", "KEY=VALUE"]),
    (["--threads", "-1"], ["--threads", ">= 1"]),
    (["--threads", "0"], ["--threads", ">= 1"]),
    (["--device", "cuda"], ["--device", "CUDA", "--device cpu"]),
    (["--device", "tpu9"], ["--device", "cpu"]),
    (["--data-root", "/no/such/dir"], ["--data-root", "not a directory", "leave it out"]),
    (["--train-subset", "0"], ["--train-subset", ">= 1"]),
    (["--momentum", "1.0"], ["--momentum", r"\[0, 1\)"]),
    (["--lr", "0"], ["--lr", "learning rate"]),
    (["--weight-decay", "-1"], ["--weight-decay"]),
    (["--label-smoothing", "1"], ["--label-smoothing"]),
    (["--nesterov", "--momentum", "0"], ["--nesterov", "--momentum > 0"]),
    (["--density", "1.5"], ["--density", r"\(0, 1\]", "fraction"]),
    (["--distribution", "ekr"], ["distribution", "erk"]),
    (["--milestones", "0.5,a"], ["--milestones", "0.5,0.75"]),
    (["--ticket-lr", "0.01,0.001"], ["--ticket-lr", "low <= high"]),
    (["--method", "rigl+sup-tickets", "--ticket-grow", "best"], ["--ticket-grow", "gradient"]),
    (["--method", "rigl+sup-tickets", "--cycle-epochs", "5"], ["cycle", "epochs"]),
])
def test_train_refuses_bad_settings_with_one_error_line(tmp_path, capsys, extra, words):
    _cli_error(capsys, ["train", "--out", str(tmp_path / "r"), *_SYN, *extra], *words)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_a_cli_run_in_which_no_update_fits_is_refused(tmp_path, capsys):
    # 512 synthetic examples, batch 128, 4 epochs: 16 steps; RigL's default interval is 100
    argv = ["train", "--out", str(tmp_path / "r"), *_SYN, "--epochs", "4", "--method", "rigl"]
    _cli_error(capsys, argv, "RigL", "no topology update fits", "total_steps=16", "--hp update_interval")


@pytest.mark.parametrize("text, words", [
    ("epochs = 1\nbogus = 3\n", ["unknown setting", "bogus"]),
    ("epochs = 1\n[algorithm]\nfoo = 3\n", ["'foo'", "valid"]),
    ("epochs = [\n", ["not valid TOML"]),
    ("algorithm = 5\n", [r"\[algorithm\]", "table"]),
])
def test_config_file_mistakes_are_one_error_line(tmp_path, capsys, text, words):
    cfg = tmp_path / "run.toml"
    cfg.write_text('dataset = "synthetic"\nmodel = "mlp"\n' + text)
    _cli_error(capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "r")], *words)


@pytest.mark.parametrize("argv, words", [
    (["sweep", "--densities", "0.1,x"], ["--densities", "0.1,0.05"]),
    (["sweep", "--seeds", "zero"], ["--seeds", "0,1,2"]),
    (["sweep", "--jobs", "0"], ["--jobs", ">= 1"]),
    (["sweep", "--grid", "lr"], ["--grid", "KEY=V1,V2"]),
    (["sweep", "--methods", "rigl", "--grid", "foo=1,2"], ["run rigl", "'foo'", "valid"]),
    (["compare", "--ticket-lr", "0.1"], ["--ticket-lr", "2 comma-separated"]),
    (["demo", "--density", "1.5"], ["run static", "density"]),
    (["demo", "--epochs", "0"], ["--epochs 0", "at least 3"]),
    (["demo", "--epochs", "2"], ["--epochs 2", "at least 3"]),
])
def test_grid_commands_validate_every_run_before_the_first(tmp_path, capsys, argv, words):
    extra = ["--dataset", "synthetic"] if argv[0] == "sweep" else []
    _cli_error(capsys, [*argv, "--out", str(tmp_path / "g"), *extra], *words)
    assert not list((tmp_path / "g").glob("runs/*"))  # no run started (not even dense)


def test_ignored_settings_are_warned(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["train", "--out", str(out), *_SYN, "--method", "dense", "--density", "0.05", "--optimizer", "adam",
            "--momentum", "0.5", "--no-progress", "--hp", "update_interval=2"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    # the flags as the user typed them (--hp, not the internal algorithm_kwargs)
    _says(err, r"warning: --density, --hp have no effect with --method dense",
          r"warning: --momentum has no effect with --optimizer adam")


def test_help_states_each_default_once():
    for command in ("train", "sweep", "compare", "report", "demo"):
        text = cli._build_parser()._subparsers._group_actions[0].choices[command].format_help()
        assert "(default: None)" not in text, command
        for option in re.split(r"\n  (?=-)", text):  # one block per option
            assert " ".join(option.split()).count("default:") <= 1, option


def test_report_names_the_files_it_skipped(tmp_path, capsys):
    runs = tmp_path / "a" / "runs"
    runs.mkdir(parents=True)
    (runs / "broken.json").write_text('{"config": {')
    assert cli.main(["report", str(tmp_path / "a"), "--out", str(tmp_path / "rep")]) == 2  # nothing readable
    _says(capsys.readouterr().err, "skipped .*broken.json", "corrupt", "error: no run results found")
    _cli_error(capsys, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "rep")], "no such directory")


def test_an_internal_error_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    from sparsetrain.experiments import runner

    def broken(*a, **k):
        raise ValueError("an invariant broke")  # a plain ValueError is a bug, not an input error

    monkeypatch.setattr(runner, "run", broken)
    with pytest.raises(ValueError, match="invariant"):
        cli.main(["train", "--out", str(tmp_path / "r"), *_SYN, "--method", "static"])
    _says(capsys.readouterr().err, "internal error", "not in your input")


# ---------------------------------------------------------------------------------------------- run directories
def test_resume_of_a_finished_run_with_other_settings_is_refused_and_extend_trains_it_longer(tmp_path, capsys):
    out = str(tmp_path / "r")
    base = ["train", "--out", out, *_SYN, "--method", "static", "--density", "0.3", "--no-progress"]
    assert cli.main(base) == 0
    capsys.readouterr()
    _cli_error(capsys, base + ["--resume", "--lr", "0.05"], "finished run", "'lr'", "--overwrite")
    line = _cli_error(capsys, base + ["--resume", "--epochs", "2"], "'epochs'", "--extend")
    assert "larger --epochs" in line
    _cli_error(capsys, base + ["--extend", "--epochs", "2", "--lr", "0.05"], "--extend changes only --epochs", "lr")
    assert cli.main(base + ["--extend", "--epochs", "2"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["config"]["epochs"] == 2 and len(summary["curve"]) == 2
    assert json.loads((tmp_path / "r" / "config.json").read_text())["extended_from"] == [1]
    assert cli.main(base + ["--resume", "--epochs", "2"]) == 0  # now the run's own settings


def test_a_truncated_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    from sparsetrain.experiments.config import RunConfig
    from sparsetrain.experiments.runner import run

    cfg = RunConfig(dataset="synthetic", model="mlp", method="static", density=0.3, epochs=2, batch_size=128)
    out = tmp_path / "r"
    first = run(cfg, out)
    (out / "summary.json").unlink()  # as if killed after the last checkpoint
    last = out / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.warns(InputWarning) as rec:
        again = run(cfg, out, resume=True)
    _says(rec[0].message, "checkpoint_last.pt cannot be read", "checkpoint_prev.pt", "epoch 1")
    assert again["test_acc"] == first["test_acc"] and len(again["curve"]) == 2  # epoch 2 trained again, exactly
    (out / "summary.json").unlink()
    for name in ("checkpoint_last.pt", "checkpoint_prev.pt"):
        (out / name).write_bytes(b"garbage")
    with pytest.raises(InputError) as info:
        run(cfg, out, resume=True)
    _says(info.value, "checkpoint_last.pt", "checkpoint_prev.pt", "--overwrite")


def test_a_damaged_checkpoint_is_detected_by_its_checksum(tmp_path):
    from sparsetrain.experiments.rundir import RunDirectory

    rd = RunDirectory(tmp_path)
    rd.save_checkpoint({"model": {"w": torch.arange(64, dtype=torch.float32)}, "epoch": 1, "step": 4})
    rd.save_checkpoint({"model": {"w": torch.arange(64, dtype=torch.float32) + 1}, "epoch": 2, "step": 8})
    raw = bytearray((tmp_path / "checkpoint_last.pt").read_bytes())
    at = raw.find(bytes((torch.arange(64, dtype=torch.float32) + 1).untyped_storage()))
    raw[at + 9] ^= 0x01
    (tmp_path / "checkpoint_last.pt").write_bytes(bytes(raw))
    with pytest.warns(InputWarning) as rec:
        ckpt = rd.checkpoint()
    _says(rec[0].message, "damaged", "checksum", "checkpoint_prev.pt")
    assert ckpt["epoch"] == 1


# ---------------------------------------------------------------------------------------------- demo and progress
def test_a_one_off_slow_run_is_marked_in_the_table_and_results_md(tmp_path):
    from sparsetrain.experiments.grid import slow_runs

    def result(method, t):
        return {"config": {"method": method, "density": 0.05, "seed": 0}, "label": method, "test_acc": 0.8,
                "density": 0.05, "itop_rate": 0.1, "train_flops_fraction": 0.1, "inference_flops_fraction": 0.1,
                "wall_time_s": t}

    results = [result("static", 20.0), result("set", 22.0), result("rigl", 210.0), result("dstee", 25.0)]
    assert [(r["label"], round(x, 1)) for r, x in slow_runs(results)] == [("rigl", 8.9)]
    table = cli.format_table(cli.aggregate(results))
    (tmp_path / "results.md").write_text("# demo\n\n" + table + "\n")
    marked = cli._mark_slow(table, tmp_path, results)
    _says(marked, r"\| rigl \|.*\| 210\.0 \(slow\) \|", r"8\.9× the median run", "not comparable")
    assert "| set |" in marked and "22.0 (slow)" not in marked
    assert "(slow)" in (tmp_path / "results.md").read_text()


def test_grid_runs_print_a_line_per_epoch(tmp_path, capsys):
    argv = ["compare", "--methods", "static", "--densities", "0.3", "--seeds", "0", "--dataset", "synthetic",
            "--epochs", "2", "--out", str(tmp_path / "c")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    _says(out, r"\[1/1\] static-d0.3-s0 \.\.\.", r"epoch 1/2: test acc", r"epoch 2/2: test acc",
          r"\[1/1\] static-d0.3-s0 acc")


# ---------------------------------------------------------------------------------------------- selection (issue 13's checks)
@pytest.mark.parametrize("kwargs, words", [
    (dict(exclude="3.weight"), ["exclude='3.weight'", "matches no parameter", "spelling"]),
    (dict(dense="O.weight"), ["dense='O.weight'", "matches no parameter", "spelling"]),
    (dict(include="nothing*"), ["include='nothing\\*'", "matches no parameter"]),
])
def test_selectors_that_match_nothing_are_refused(kwargs, words):
    model, opt = _mlp()
    with pytest.raises(ValueError) as info:
        st.Sparsifier(model, opt, "rigl", density=0.3, total_steps=100, update_interval=10, **kwargs)
    _says(info.value, *words)


def test_dense_takes_module_types_like_include():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(24, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = st.Sparsifier(model, opt, "rigl", density=0.5, total_steps=100, update_interval=10, dense=nn.Conv1d)
    assert bool(sp.masks["0.weight"].all()) and not bool(sp.masks["2.weight"].all())


def test_a_data_root_without_the_files_is_an_error_not_a_fallback(tmp_path):
    from sparsetrain.experiments.datasets.idx import load_fashion_mnist

    with pytest.raises(FileNotFoundError, match="Only the data root you gave") as err:
        load_fashion_mnist(root=tmp_path)
    assert str(tmp_path) in str(err.value) and "leave it out" in str(err.value)


def test_selection_and_dataset_errors_are_input_errors():
    from torch import nn

    from sparsetrain.experiments.datasets.memory import InMemoryDataset

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(st.InputError, match="nope"):
        st.Sparsifier(model, opt, st.RigL(density=0.5), total_steps=1000, exclude=["nope"])
    with pytest.raises(st.InputError, match="images must be"):
        InMemoryDataset(torch.zeros(3, 4), torch.zeros(3))


def test_a_language_model_on_images_is_one_error_line(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "r"), "--model", "gpt-micro", "--dataset", "synthetic",
                     "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "do not fit together" in err and "Traceback" not in err


@pytest.mark.parametrize("total", [float("nan"), float("inf"), -3, "100", 2.5])
def test_total_steps_that_is_no_whole_number_is_an_input_error_not_a_crash(total):
    # NaN and infinity used to escape as ValueError/OverflowError from int()
    model, opt = _mlp()
    with pytest.raises(InputError) as info:
        st.Sparsifier(model, opt, "rigl", density=0.1, total_steps=total)
    _says(info.value, "total_steps", "whole number", r"len\(loader\) \* epochs")


def test_total_steps_of_any_integer_type_is_accepted():
    # numpy and torch integers (e.g. from np.ceil(n / batch).astype(int) * epochs) used to be refused
    np = pytest.importorskip("numpy")
    for total in (np.int64(200), torch.tensor(200), np.float64(200.0), 200.0):
        model, opt = _mlp()
        sp = st.Sparsifier(model, opt, "rigl", density=0.1, total_steps=total, update_interval=10)
        assert sp.total_steps == 200 and type(sp.total_steps) is int
        sp.remove()


def test_a_missing_total_steps_says_the_fix_once():
    model, opt = _mlp()
    with pytest.raises(InputError) as info:
        st.Sparsifier(model, opt, "rigl", density=0.1)
    assert str(info.value).count("len(loader) * epochs") == 1, str(info.value)


def test_wrong_kinds_of_model_algorithm_and_argument_order_are_named():
    model, opt = _mlp()
    with pytest.raises(InputTypeError) as info:  # the class instead of an instance: the message was "st.type(...)"
        st.Sparsifier(model, opt, st.RigL, density=0.1, total_steps=100)
    _says(info.value, "RigL is a class", r"st\.RigL\(density=0\.1", "'rigl'")
    with pytest.raises(InputTypeError) as info:  # used to be an AttributeError from deep inside
        st.Sparsifier(lambda x: x, opt, "rigl", density=0.1, total_steps=100)
    _says(info.value, "model must be an nn.Module", "function")
    with pytest.raises(InputTypeError) as info:
        st.Sparsifier(opt, model, "rigl", density=0.1, total_steps=100)
    _says(info.value, "model must be an nn.Module", r"Sparsifier\(model, optimizer, algorithm")
    with pytest.raises(InputTypeError) as info:
        st.Sparsifier(model, opt, 3, total_steps=100)
    _says(info.value, "algorithm must be an Algorithm", "'rigl'")


def test_a_weight_left_dense_by_default_says_how_to_opt_in():
    # ConvTranspose2d: the reason used to be "not a Linear/Conv weight" (a ConvTranspose2d is a
    # conv), with no way to make it sparse; then the hint was include=['1.weight'], which makes
    # every *other* layer dense. The hint keeps the defaults.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 2, 2))
    sp = st.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), "static", density=0.5)
    reason = dict((n, r) for n, _, r in sp.selection.left)["1.weight"]
    _says(reason, "ConvTranspose2d", r"include=\[st\.DEFAULT_LAYERS, '1\.weight'\]")
    assert "include=[st.DEFAULT_LAYERS, '1.weight']" in sp.summary()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 2, 2))  # following the hint: both sparse
    sp = st.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), "static", density=0.5,
                       include=[st.DEFAULT_LAYERS, "1.weight"])
    assert [s.name for s in sp.selection.selected] == ["0.weight", "1.weight"]
    assert sp.selection.why == {"0.weight": "Conv2d", "1.weight": "include='1.weight'"}


def test_a_seed_beyond_64_bits_is_an_input_error():
    with pytest.raises(InputError) as info:  # was "Overflow when unpacking long long" from the generator
        st.Sparsifier(*_mlp(), "rigl", density=0.1, total_steps=1000, seed=2**70)
    _says(info.value, "seed", "64 bits")


@pytest.mark.parametrize("compressed", [False, True])
def test_a_weight_replaced_after_attaching_is_refused_at_the_next_update(compressed):
    # the replacement would train dense and unseen by the Sparsifier (and its optimizer)
    model, _ = _mlp()
    if compressed:
        st.sparse.to_sparse(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = st.Sparsifier(model, opt, st.SET(density=0.3, update_interval=2), total_steps=20)
    _train(model, opt, 2)
    assert sp.updates == 1  # untouched: updates run
    if compressed:
        model[0] = nn.Linear(model[0].in_features, model[0].out_features)
    else:
        model[0].weight = nn.Parameter(torch.randn_like(model[0].weight))
    with pytest.raises(InputError) as err:
        _train(model, opt, 2)
    _says(str(err.value), "0.weight", "replaced", "before creating the optimizer")
