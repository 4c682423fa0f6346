"""Check a command line before any work: every configuration it would run must compose,
match the schema, and hold possible values; its inputs must exist (IDX files are read and
checked whole), a CUDA device asked for must be there, and the output folder must be
writable. Errors are one line naming the key and what is allowed; nothing is written.

Sweeps are checked value by value (each swept value once, with the fixed overrides), which
catches every per-key error without composing the whole product.

For a single run, ``check`` also says what the run will do with its folder (fresh, resume,
nothing to do; see ``testbed.app.checkpoint.plan_run``), so that a run that is already finished
is left untouched.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from testbed.app import schema
from testbed.app.checkpoint import Plan, plan_run
from testbed.app.run import resolve_device
from testbed.app.schema import Config, ConfigError, register_configs, validate
from testbed.data import DataError, load_dataset
from testbed.data.registry import options as data_options

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _allowed_options(message: str) -> list[str]:
    """The 'Available options' Hydra lists for a config group, without our schema entries."""
    block = message.split("Available options in", 1)[-1].split("Config search path", 1)[0]
    return [line.strip() for line in block.splitlines()[1:]
            if line.strip() and not line.strip().endswith("_schema")]


def explain(error: BaseException, override: str | None = None) -> str:
    """A one-line message for a Hydra/OmegaConf composition error."""
    chain, e = [], error
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        key = getattr(e, "full_key", None)
        text = str(e).split("\n")[0]
        if key and "not in" in text:
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            if _is_free_form(parent):
                return (f"'{key}' is new under {parent}, which takes new keys only with a leading '+': "
                        f"+{key}=VALUE or +{parent}={{...}}")
            return f"unknown key '{key}'; allowed keys{' under ' + parent if parent else ''}: " + ", ".join(
                schema_keys(parent))
        if not key:
            continue
        invalid = re.match(r"Invalid value '(.*)', expected one of \[(.*)\]", text)
        if invalid:
            return f"{key}='{invalid.group(1)}' is not allowed; allowed: {invalid.group(2)}"
        converted = re.match(r"Value '(.*)' of type '.*' could not be converted to (\w+)", text)
        if converted:
            value, kind = converted.group(1), converted.group(2).lower()
            return f"{key}='{value}' is not allowed; {key} must be of type {kind}"
        enum = re.search(r"Value (.*) \(\w+\) is not a valid input for <enum '(\w+)'>", text)
        if enum and isinstance(getattr(schema, enum.group(2), None), type):
            allowed = ", ".join(member.value for member in getattr(schema, enum.group(2)))
            return f"{key}={enum.group(1)} is not allowed; allowed: {allowed}"
        container = re.match(r"Invalid value assigned: (\w+) is not a (ListConfig|DictConfig)", text)
        if container:
            kind = "list, e.g. [0.9,0.999]" if container.group(2) == "ListConfig" else "mapping, e.g. {k:v}"
            return f"{key} is not allowed to be a {container.group(1)}; {key} must be a {kind}"
        return f"{key}: {text.rstrip('.')}"
    message = str(error)
    missing = re.search(r"Could not find '([^']+)'", message)
    if missing:
        group, _, option = missing.group(1).rpartition("/")
        options = _allowed_options(message)
        allowed = f"; allowed: {', '.join(options)}" if options else ""
        return f"{group}={option} is not a known {group} config{allowed}"
    return _one_line(message)


def _schema_node(path: str) -> Any:
    """The dataclass (or dict, list) the schema has at a dotted path; None if it has none."""
    node: Any = Config
    for part in filter(None, path.split(".")):
        if not is_dataclass(node):
            return None
        field = {f.name: f for f in fields(node)}.get(part)
        if field is None:
            return None
        node = field.default_factory
    return node


def schema_keys(path: str) -> list[str]:
    node = _schema_node(path)
    return [f.name for f in fields(node)] if is_dataclass(node) else []


def _is_free_form(path: str) -> bool:
    """A dict field of the schema (data.options, model.init_params, ...): any keys, added with '+'."""
    return bool(path) and _schema_node(path) is dict


def _unknown_keys(cfg: DictConfig, node: Any = Config, prefix: str = "") -> list[str]:
    """Keys present in ``cfg`` that the schema does not have (a `+key=` under a typed node)."""
    known = {f.name: f for f in fields(node)}
    unknown = []
    for key in cfg:
        if key not in known:
            unknown.append(f"{prefix}{key}")
            continue
        factory = known[key].default_factory
        if is_dataclass(factory) and isinstance(cfg[key], DictConfig):
            unknown += _unknown_keys(cfg[key], factory, f"{prefix}{key}.")
    return unknown


def check_config(cfg: DictConfig, loaded: set | None = None) -> None:
    """Schema extras, impossible values, and inputs that must exist: the data (IDX files are
    loaded, once per folder and options in ``loaded``) and the device."""
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
    for key in _unknown_keys(plain):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        raise ConfigError(f"unknown key '{key}'; allowed keys{' under ' + parent if parent else ''}: "
                          + ", ".join(schema_keys(parent)))
    validate(cfg)
    name = str(cfg.data.name)
    allowed = data_options(name)
    unknown = sorted(set(cfg.data.options) - set(allowed) - {"path"})
    if unknown:
        raise ConfigError(f"unknown key 'data.options.{unknown[0]}' for data={name}; allowed: "
                          + (", ".join(k for k in allowed if k != "path") or "none"))
    if name == "idx":
        if not Path(cfg.data.path).exists():
            raise ConfigError(f"data.path='{cfg.data.path}' does not exist; data.path must be the folder "
                              "holding the IDX files")
        options = {**OmegaConf.to_container(cfg.data.options, resolve=True), "path": cfg.data.path}
        key = repr(sorted(options.items()))
        if loaded is None or key not in loaded:
            try:
                load_dataset(name, seed=cfg.data.seed, **options)
            except DataError as error:
                raise ConfigError(f"data.path='{cfg.data.path}': {error}") from None
            if loaded is not None:
                loaded.add(key)
    if str(cfg.device) == "cuda":
        resolve_device("cuda")
    if OmegaConf.select(cfg, "engine.cuda_graph", default=False) and not torch.cuda.is_available():
        raise ConfigError(f"engine.cuda_graph=True is not allowed here: device={cfg.device} finds no CUDA "
                          "device; engine.cuda_graph must be false on a machine without CUDA")


def check_writable(key: str, folder: str | Path) -> None:
    """The output folder, or the nearest existing folder above it, must take a new file."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}='{folder}' is not writable: {probe} is not a folder; "
                          f"{key} must be a folder you can write to")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise ConfigError(f"{key}='{folder}' is not writable ({probe}: {error.strerror}); "
                          f"{key} must be a folder you can write to") from None


def _expand(overrides: list[str]) -> list[list[str]]:
    """The fixed overrides, then the fixed overrides plus each swept value alone."""
    parser = OverridesParser.create()
    parsed = []
    for override in overrides:
        try:
            parsed += parser.parse_overrides([override])
        except Exception as error:  # a syntax error in an override
            reason = _one_line(str(error)).split(" See https://", 1)[0]
            raise ConfigError(f"'{override}' is not a valid override ({reason}); overrides are "
                              "key=value, e.g. model.depth=3 or model.depth=1,2,3") from None
        if not parsed[-1].key_or_group:
            raise ConfigError(f"'{override}' names no key; overrides are key=value, e.g. model.depth=3")
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    variants = [fixed]
    for override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            variants += [fixed + [f"{key}={value}"] for value in override.sweep_string_iterator()]
    return variants


@dataclass
class Checked:
    count: int  # configurations checked
    run_dir: Path | None = None  # a single run: its output folder
    plan: Plan | None = None  # a single run: fresh, resume or skip


def check(overrides: list[str], multirun: bool = False) -> Checked:
    """Compose and check every configuration the command line names; ConfigError if one fails."""
    try:
        return _check(overrides, multirun)
    except ConfigError as error:  # one line, even where an override has a line break in it
        raise ConfigError(_one_line(str(error))) from None


def _check(overrides: list[str], multirun: bool) -> Checked:
    register_configs()
    GlobalHydra.instance().clear()
    checked = Checked(0)
    loaded: set = set()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            queue = _expand(overrides)
            seen_sweeper = False
            while queue:
                variant = queue.pop(0)
                try:
                    cfg = compose("config", overrides=variant, return_hydra_config=True)
                    check_config(cfg, loaded)
                    if checked.count == 0:
                        _check_output(cfg, multirun, checked)
                except ConfigError:
                    raise
                except Exception as error:
                    raise ConfigError(explain(error)) from None
                checked.count += 1
                # sweeps that an experiment preset declares in hydra.sweeper.params
                params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
                if not seen_sweeper and params:
                    seen_sweeper = True
                    command_keys = {o.split("=", 1)[0].lstrip("+~") for o in variant}
                    declared = [f"{k}={v}" for k, v in params.items() if k not in command_keys]
                    queue += [variant + extra for extra in _expand(declared)]
    finally:
        GlobalHydra.instance().clear()
    return checked


def _check_output(cfg: DictConfig, multirun: bool, checked: Checked) -> None:
    """The output folder is writable; a single run learns what it will do with it."""
    multirun = multirun or OmegaConf.select(cfg, "hydra.mode") == RunMode.MULTIRUN
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        folder = Path(str(OmegaConf.select(cfg, key)))
    except Exception:  # interpolations known only inside a job: checked when the job starts
        return
    check_writable(key, folder)
    if not multirun:
        checked.run_dir = folder
        checked.plan = plan_run(folder, cfg, multirun=False)


def preflight(overrides: list[str], multirun: bool = False) -> int:
    """Compose and check every configuration the command line names; returns how many."""
    return check(overrides, multirun).count
