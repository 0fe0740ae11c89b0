"""Run and sweep config files: TOML, YAML or JSON, and a run's own ``config.json``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["load_config", "run_settings", "is_run_record"]


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a run/sweep config file: TOML (``.toml``), YAML (``.yaml``/``.yml``, needs PyYAML) or JSON.

    Keys are run settings (``epochs = 30``; dashes or underscores); an ``[algorithm]`` table holds
    algorithm hyper-parameters and, for ``sweep``, a ``[grid]`` table maps settings to lists.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError as e:
                raise ImportError("reading TOML on Python 3.10 needs tomli: pip install tomli") from e
        try:
            data = tomllib.loads(p.read_text())
        except ValueError as e:  # tomllib.TOMLDecodeError
            raise InputError(f"config file {p} is not valid TOML: {e}") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ImportError("reading YAML config files needs PyYAML: pip install pyyaml (or use TOML)") from e
        try:
            data = _yaml_numbers(yaml.safe_load(p.read_text()) or {})
        except yaml.YAMLError as e:
            raise InputError(f"config file {p} is not valid YAML: {e}") from None
    elif suffix == ".json":
        try:
            data = json.loads(p.read_text())
        except ValueError as e:
            raise InputError(f"config file {p} is not valid JSON: {e}") from None
    else:
        raise InputError(f"config file {p}: unknown format {suffix!r}; use .toml, .yaml/.yml or .json")
    if not isinstance(data, dict):
        raise InputError(f"config file {p} must hold a table of settings")
    if _is_record(data):  # a run's own config.json: its settings
        data = run_settings(data)
    for table in ("algorithm", "grid"):
        if table in data and not isinstance(data[table], dict):
            raise InputError(f"config file {p}: [{table}] must be a table of key = value, got {data[table]!r}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def run_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run's ``config.json`` record, as a config file holds them (its algorithm
    hyper-parameters as the ``algorithm`` table)."""
    data = dict(record["config"])
    algo = data.pop("algorithm_kwargs", None) or {}
    if algo:
        data["algorithm"] = dict(algo)
    return data


# PyYAML reads YAML 1.1, where 1e-3 (no dot) and 1.0e3 (no sign) are strings; YAML 1.2, TOML and JSON say numbers
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml_numbers(value: Any) -> Any:
    """``value`` with every string written as a number in scientific notation (``1e-3``) made a float."""
    if isinstance(value, dict):
        return {k: _yaml_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_numbers(v) for v in value]
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)
    return value


def _is_record(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("config"), dict) and "label" in data


def is_run_record(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run's own ``config.json`` (every setting written out, typed or not)."""
    p = Path(path)
    if p.suffix.lower() != ".json" or not p.exists():
        return False
    try:
        return _is_record(json.loads(p.read_text()))
    except ValueError:
        return False
