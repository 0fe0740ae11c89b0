"""sparsetrain.experiments.configfile: config files in TOML/YAML/JSON, and a run's own config.json."""

import json

import pytest

from sparsetrain.errors import InputError
from sparsetrain.experiments.config import RunConfig
from sparsetrain.experiments.configfile import is_run_record, load_config, run_settings


def test_toml_and_json_settings_with_dashes_and_an_algorithm_table(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('model = "mlp"\nbatch-size = 64\n[algorithm]\nupdate_interval = 200\n')
    assert load_config(toml) == {"model": "mlp", "batch_size": 64, "algorithm": {"update_interval": 200}}
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"model": "mlp", "grid": {"lr": [0.1, 0.2]}}))
    assert load_config(js) == {"model": "mlp", "grid": {"lr": [0.1, 0.2]}}


def test_a_runs_config_json_reads_as_its_settings(tmp_path):
    cfg = RunConfig(method="dstee", density=0.05, epochs=3, algorithm_kwargs={"c": 0.01})
    record = {"config": {**json.loads(json.dumps(cfg.__dict__, default=list))}, "label": "dstee", "steps_per_epoch": 4}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(record))
    data = load_config(path)
    assert data["algorithm"] == {"c": 0.01} and "algorithm_kwargs" not in data and "label" not in data
    assert data["method"] == "dstee" and data["epochs"] == 3
    assert run_settings({"config": {"lr": 0.1, "algorithm_kwargs": {}}, "label": "x"}) == {"lr": 0.1}
    assert is_run_record(path) and not is_run_record(tmp_path / "missing.json")
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"config": {"lr": 0.1}}))  # a setting named config, no run record
    assert not is_run_record(plain)


@pytest.mark.parametrize("name, text, words", [
    ("run.ini", "x=1", "unknown format"), ("run.json", "{", "not valid JSON"), ("run.json", "[1]", "table of settings"),
    ("run.toml", "[algorithm]\n", None), ("run.json", '{"algorithm": 3}', "must be a table"),
])
def test_bad_files_are_input_errors_naming_the_file(tmp_path, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    if words is None:
        assert load_config(path) == {"algorithm": {}}
        return
    with pytest.raises(InputError, match=words) as e:
        load_config(path)
    assert name in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
