"""A sweeper that trains sweep points of one shape together, as replicas in one job.

    python -m testbed -m hydra/sweeper=batched seed=0,1,2,3 optim.lr=0.01,0.1 model.depth=2,4

takes the command line the basic sweeper takes (and ``hydra.sweeper.params`` from the config)
and makes the same points, in the same order, with the same job numbers. Points that differ only
in the batchable keys (``seed``, ``optim.lr``, ``model.init``, ``model.init_scale``) form one
group, trained as ``train.replicas=K`` in one job through the configured launcher (basic, joblib,
submitit); above, 16 points in 2 jobs of 8 replicas.

**The grouping rule.** Two points go in one group when (1) their overrides, the batchable ones
left out, are the same strings, and (2) their resolved configs, the four batchable keys left
out, are equal (this catches a key that interpolates a batchable one, e.g. ``data.seed: ${seed}``),
and both can batch: ``engine=manual`` or ``engine=both``, not already a replica run. A group has
at most ``hydra.sweeper.max_replicas`` points (null: no limit). A point that groups with no other,
or cannot batch, runs as the basic sweeper would run it: one job, with its own job number.

**Outputs.** Each point's folder is the one the basic sweeper would give it
(``<sweep dir>/<hydra.sweep.subdir>``, by default ``<sweep dir>/<job number>/``), holding
``.hydra/{config,hydra,overrides}.yaml`` written as Hydra's ``run_job`` writes them (the
sweeper writes them before it launches the group), and the run's own files (config.yaml,
metrics.jsonl, summary.json, wandb/) written by the replica runner, with the W&B group and name
of that job. A group's job runs in ``<sweep dir>/.batched/<i>/`` (its .hydra folder, log,
config.yaml with the replica lists, and a summary.json listing its points); ``load_sweep`` and
``scripts/aggregate.py`` read job folders only, so they see the same sweep either way.

The group's job gets its points as overrides: the first point's overrides plus
``train.replicas=K``, ``train.replica_{seeds,lrs,inits,init_scales}=[...]`` and
``train.replica_dirs=[...]`` (the points' folders).
"""

# No `from __future__ import annotations`: Hydra scans plugins with modules that are not in
# sys.modules, where dataclasses cannot resolve string annotations.
import copy
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, _save_config
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)

# The keys in which points of one group may differ (testbed.app.replicas.BATCHABLE).
BATCHABLE = ("seed", "optim.lr", "model.init", "model.init_scale")
BATCHABLE_ENGINES = ("manual", "both")
GROUP_FOLDER = ".batched"


@dataclass
class BatchedSweeperConf:
    _target_: str = "hydra_plugins.testbed_batched_sweeper.batched_sweeper.BatchedSweeper"
    max_replicas: int | None = None  # at most this many points trained together (null: no limit)
    params: dict[str, str] | None = None  # sweeps declared in the config, as the basic sweeper's


ConfigStore.instance().store(group="hydra/sweeper", name="batched", node=BatchedSweeperConf,
                             provider="testbed")


@dataclass
class Point:
    """One sweep point as the basic sweeper and launcher would run it."""

    num: int  # the job number
    overrides: list[str]  # what the basic sweeper would pass to the launcher
    config: DictConfig  # the job's config, hydra node included, as run_job sees it
    task: DictConfig  # the task's config (run_job's task_cfg)
    hydra: DictConfig  # the hydra node (run_job's hydra_cfg)
    resolved: dict | None  # the task config resolved (None: it does not resolve here)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.hydra.runtime.output_dir)


def _get(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _without_batchable(resolved: dict) -> str:
    """The resolved config, the batchable keys left out, as canonical text."""
    rest = copy.deepcopy(resolved)
    for dotted in BATCHABLE:
        *parents, last = dotted.split(".")
        node = rest
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return json.dumps(rest, sort_keys=True, default=str)


def batchable(point: Point) -> bool:
    """Whether the point's config can train as a replica (and the schema knows replicas)."""
    r = point.resolved
    if r is None or "replicas" not in r.get("train", {}):
        return False
    train = r["train"]
    return (r["engine"]["name"] in BATCHABLE_ENGINES and train["replicas"] == 1
            and not any(train.get(key) for key in (
                "replica_seeds", "replica_lrs", "replica_inits", "replica_init_scales", "replica_dirs")))


def group_points(points: list[Point], parser: OverridesParser,
                 max_replicas: int | None = None) -> tuple[list[list[Point]], list[Point]]:
    """(groups of >= 2 points trained together, points run alone), both in job order."""
    groups: dict[tuple, list[Point]] = {}
    alone: list[Point] = []
    for point in points:
        if not batchable(point):
            alone.append(point)
            continue
        fixed = tuple(o.input_line for o in parser.parse_overrides(point.overrides)
                      if o.key_or_group not in BATCHABLE)
        groups.setdefault((fixed, _without_batchable(point.resolved)), []).append(point)
    batched = []
    size = max_replicas or max(1, len(points))
    for members in groups.values():
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            if len(chunk) > 1:
                batched.append(chunk)
            else:
                alone += chunk
    alone.sort(key=lambda p: p.num)
    return batched, alone


def _format(value: Any) -> str:
    """A value as Hydra's override grammar reads it back exactly."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_format(v) for v in value) + "]"
    return "'" + str(value).replace("'", "\\'") + "'"


def _override(parser: OverridesParser, key: str, value: Any) -> str:
    text = f"{key}={_format(value)}"
    parsed = parser.parse_override(text).value()
    if parsed != value and list(parsed) != list(value):
        raise ValueError(f"cannot pass {key}={value!r} to a job: it reads back as {parsed!r}")
    return text


def _consecutive(points: list[Point]) -> list[list[Point]]:
    """Runs of consecutive job numbers (one launch each keeps every job's own number)."""
    runs: list[list[Point]] = []
    for point in points:
        if runs and runs[-1][-1].num + 1 == point.num:
            runs[-1].append(point)
        else:
            runs.append([point])
    return runs


class BatchedSweeper(Sweeper):
    """Hydra's basic sweep; points that differ only in batchable keys run as replicas in one job."""

    def __init__(self, max_replicas: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__()
        if max_replicas is not None and max_replicas < 1:
            raise ValueError(f"hydra.sweeper.max_replicas must be null or >= 1, got {max_replicas}")
        self.max_replicas = max_replicas
        self.params = params or {}
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # -- the points, as the basic sweeper and launcher make them --------------------------------

    def points(self, arguments: list[str]) -> list[Point]:
        assert self.hydra_context is not None
        params_conf = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        [every] = BasicSweeper.split_arguments(parser.parse_overrides(params_conf), None)
        return [self._compose(num, overrides) for num, overrides in enumerate(every)]

    def _compose(self, num: int, overrides: list[str]) -> Point:
        """The point's config, output folder and .hydra contents, as the launcher and run_job make
        them (hydra.core.utils.run_job)."""
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = num
            config.hydra.job.num = num
        hydra_config = HydraConfig.instance()
        saved = hydra_config.cfg
        try:
            hydra_config.set_config(config)
            output_dir = os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")),
                                      str(OmegaConf.select(config, "hydra.sweep.subdir")))
            with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                config.hydra.runtime.output_dir = os.path.abspath(output_dir)
            hydra_config.set_config(config)
            task = copy.deepcopy(config)
            with read_write(task), open_dict(task):
                del task["hydra"]
            hydra = copy.deepcopy(hydra_config.cfg)
            try:
                resolved = OmegaConf.to_container(task, resolve=True, enum_to_str=True)
            except Exception:  # resolvable only inside the job: run it as the basic sweeper would
                resolved = None
        finally:
            hydra_config.cfg = saved
        return Point(num, list(overrides), config, task, hydra, resolved)

    @staticmethod
    def write_hydra_files(point: Point) -> None:
        """.hydra/{config,hydra,overrides}.yaml, as run_job writes them."""
        subdir = point.config.hydra.output_subdir
        if subdir is None:
            return
        folder = point.output_dir / str(subdir)
        _save_config(point.task, "config.yaml", folder)
        _save_config(point.hydra, "hydra.yaml", folder)
        _save_config(point.config.hydra.overrides.task, "overrides.yaml", folder)

    def group_overrides(self, index: int, group: list[Point], parser: OverridesParser) -> list[str]:
        """The overrides of the job that trains ``group``: its first point's, plus the replicas."""
        lists = {
            "train.replicas": len(group),
            "train.replica_seeds": [_get(p.resolved, "seed") for p in group],
            "train.replica_lrs": [float(_get(p.resolved, "optim.lr")) for p in group],
            "train.replica_inits": [str(_get(p.resolved, "model.init")) for p in group],
            "train.replica_init_scales": [float(_get(p.resolved, "model.init_scale")) for p in group],
            "train.replica_dirs": [str(p.output_dir) for p in group],
        }
        return [*group[0].overrides, *(_override(parser, key, value) for key, value in lists.items()),
                _override(parser, "hydra.sweep.subdir", f"{GROUP_FOLDER}/{index}")]

    # -- the sweep ------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        tic = time.perf_counter()
        points = self.points(arguments)  # composes every point: the basic sweeper's validation too
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        groups, alone = group_points(points, parser, self.max_replicas)
        if points and not any(batchable(p) for p in points) and points[0].resolved is not None and (
                "replicas" not in points[0].resolved.get("train", {})):
            log.warning("hydra/sweeper=batched: the config has no train.replicas; every point runs alone")
        log.info("Batched sweep: %d points in %d jobs of replicas (%s) and %d jobs alone (%.1f s to plan)",
                 len(points), len(groups), ", ".join(str(len(g)) for g in groups) or "none", len(alone),
                 time.perf_counter() - tic)
        for index, group in enumerate(groups):
            log.info("\treplicas %d: jobs %s", index, ",".join(str(p.num) for p in group))

        returns: list[Sequence[JobReturn]] = []
        if groups:
            jobs = [self.group_overrides(index, group, parser) for index, group in enumerate(groups)]
            for group in groups:
                for point in group:
                    self.write_hydra_files(point)
            # the groups' own job numbers follow the points', so that no number names two jobs
            returns.append(self.launcher.launch(jobs, initial_job_idx=len(points)))
        for run in _consecutive(alone):
            returns.append(self.launcher.launch([p.overrides for p in run], initial_job_idx=run[0].num))
        for results in returns:
            for result in results:
                _ = result.return_value  # a failed job raises here, as with the basic sweeper
        return returns
