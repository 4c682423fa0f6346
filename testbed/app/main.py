"""``python -m testbed`` / ``testbed``: the Hydra app.

    python -m testbed                                   # side by side on digits
    python -m testbed -m model.depth=2,5,10 seed=0,1    # a sweep
    python -m testbed +experiment=vanishing -m          # a preset

The command line is checked first (``preflight``): a bad key or value stops
with one line and exit code 2 before any run folder is made.

A run resumes from its checkpoint with ``train.resume=true`` (sweeps: by
default), and a finished run is left alone (``testbed.app.checkpoint.plan_run``).
summary.json is written last, and only when the run ended by itself: a run
stopped from outside stays incomplete.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from testbed.app.checkpoint import plan_run
from testbed.app.preflight import CONFIG_DIR, check
from testbed.app.replicas import run_replica_job, wants_replicas
from testbed.app.run import train, write_summary
from testbed.app.schema import ConfigError, register_configs
from testbed.data import DataError
from testbed.tracking.wandb_logger import open_logger

log = logging.getLogger("testbed")
register_configs()


def _logger_for(cfg: DictConfig, run_dir: Path):
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    sweep_name = Path(hc.sweep.dir).name if multirun else None
    group = cfg.logger.group or (f"{cfg.name}/{sweep_name}" if multirun else cfg.name)
    job_name = hc.job.override_dirname or cfg.name
    if multirun:
        job_name = f"{hc.job.num}:{job_name}"
    tags = list(cfg.logger.tags) + [str(cfg.engine.name), str(cfg.model.activation), str(cfg.optim.name),
                                    str(cfg.data.name)]
    return open_logger(str(cfg.logger.name), run_dir=run_dir,
                       config=OmegaConf.to_container(cfg, resolve=True),
                       project=cfg.logger.project, group=group, job_type=str(cfg.engine.name),
                       name=job_name, tags=tags, mode=str(cfg.logger.mode), entity=cfg.logger.entity,
                       init_timeout=cfg.logger.init_timeout)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def app(cfg: DictConfig) -> dict | list[dict]:
    if wants_replicas(cfg):  # train.replicas > 1, or a job of hydra/sweeper=batched
        return run_replica_job(cfg)
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    who = f"job {hc.job.num}" if multirun else str(run_dir)  # Hydra lists each job's overrides
    try:
        plan = plan_run(run_dir, cfg, multirun)
    except ConfigError as error:  # resuming a folder that holds another config (a single run)
        print(f"testbed: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if plan.reason:
        log.info("%s: %s", who, plan.reason)
    if plan.action == "skip":
        return plan.summary

    logger = _logger_for(cfg, run_dir) if cfg.logger.name != "none" else open_logger("none")
    try:
        summary = train(cfg, run_dir, logger, resume=plan.checkpoint)
    except (ConfigError, DataError) as error:
        summary = {"status": "failed", "error": str(error)}
        if not multirun:
            _close(logger, run_dir, summary)
            print(f"testbed: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
    except Exception as error:
        summary = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        if not multirun:
            _close(logger, run_dir, summary)
            raise
        log.exception("run failed; the sweep goes on")
    except BaseException:
        # Stopped from outside (Ctrl-C, a requeue signal): no summary.json, so the run reads as
        # incomplete and resumes from its checkpoint next time.
        logger.finish(None, exit_code=1)
        raise
    _close(logger, run_dir, summary)
    where = getattr(logger, "where", None)
    log.info("%s in %.1f s: outputs in %s%s", summary["status"], summary.get("wall_s", 0.0), run_dir,
             f"; W&B run in {where} (upload: wandb sync {where})" if where else "")
    return summary


def _close(logger, run_dir: Path, summary: dict) -> None:
    logger.finish(summary, exit_code=0 if summary["status"] != "failed" else 1)
    write_summary(run_dir, summary)  # last: the mark of a finished run


TAKES_VALUE = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd", "--cfg", "-c",
               "--package", "-p", "--experimental-rerun")


def _overrides(argv: list[str]) -> list[str]:
    """The key=value arguments of a Hydra command line (flags and their values dropped)."""
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in TAKES_VALUE:
            skip = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def main() -> None:
    argv = sys.argv[1:]
    overrides = _overrides(argv)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if not any(a in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c") or a.startswith("--info")
               for a in argv):
        try:
            checked = check(overrides, multirun=multirun)
        except ConfigError as error:
            print(f"testbed: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        if checked.plan is not None and checked.plan.action == "skip":
            print(f"testbed: {checked.run_dir}: {checked.plan.reason}", file=sys.stderr)
            return
    app()


if __name__ == "__main__":
    main()
