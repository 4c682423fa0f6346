"""Per-layer diagnostics to Weights & Biases, never at the cost of training.

`open_logger("wandb", ...)` gives a `WandbLogger`; `open_logger("none")` a
`NullLogger` with the same methods. Every series is plotted against our own
`step` (`define_metric("*", step_metric="step")`); per-layer keys such as
`grad_norm/W/L1` land in the panel section of everything before the last "/".

W&B must never stop or stall a training run: a failed `wandb.init` falls back
once to offline mode, then to a `NullLogger`; an exception in any later call
gives one `TrackingWarning` and turns the logger into a no-op. `init_timeout`
bounds both `wandb.init` and the upload wait in `finish`.

Several runs in one process (Hydra's joblib launcher reuses its workers) never
merge: `reinit="finish_previous"` finishes a run left open by an earlier job
before the new one starts (by default wandb 0.31 would return the old run).
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ALLOWED_MODES = ("offline", "online", "disabled")

# How long `finish` waits for wandb-core to flush the run's record file (usually a few ms).
_FLUSH_WAIT_S = 10.0
# A log-scale colour norm once the positive values span this many decades.
_LOG_NORM_MIN_DECADES = 2.0


class TrackingWarning(UserWarning):
    """W&B failed; training goes on with less (or no) logging."""


def _warn(message: str) -> None:
    warnings.warn(message, TrackingWarning, stacklevel=3)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


class NullLogger:
    """logger=none: accepts every call and does nothing."""

    where: str | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_heatmap(self, key: str, values: np.ndarray, steps: list[int], title: str) -> None:
        pass

    def log_line_series(
        self, key: str, steps: list[int], series: dict[str, list[float]], title: str, xname: str = "step"
    ) -> None:
        pass

    def finish(self, summary: dict | None = None, exit_code: int = 0) -> None:
        pass


class WandbLogger:
    """One W&B run; `where` is the offline run folder, the run URL, or "disabled".

    `run` is None when both the requested mode and the offline fallback failed
    to start (then every method is a no-op; `open_logger` returns a
    `NullLogger` instead).
    """

    def __init__(
        self,
        *,
        run_dir: str | Path,
        config: dict,
        project: str,
        group: str | None,
        job_type: str,
        name: str | None,
        tags: list[str],
        mode: str,
        entity: str | None = None,
        init_timeout: float = 30.0,
    ) -> None:
        if mode not in ALLOWED_MODES:
            raise ValueError(f"W&B mode must be one of {', '.join(ALLOWED_MODES)}; got {mode!r}")
        self.run: Any = None
        self.where: str | None = None
        self._broken = False
        self._finished = False
        init_kwargs = dict(
            run_dir=Path(run_dir),
            config=config,
            project=project,
            group=group,
            job_type=job_type,
            name=name,
            tags=list(tags),
            entity=entity,
            init_timeout=init_timeout,
        )
        try:
            self.run = _start_run(mode=mode, **init_kwargs)
        except Exception as error:  # any W&B failure, incl. timeouts
            # One more try, offline: it needs neither network nor API key.
            _warn(f"W&B {mode} init failed ({_one_line(error)}); falling back to offline mode")
            try:
                self.run = _start_run(mode="offline", **init_kwargs)
            except Exception as offline_error:
                reason = _one_line(offline_error)
                _warn(f"W&B offline init failed too ({reason}); no W&B logging for this run")
                return
        self.where = _describe_where(self.run)

    # -- logging -----------------------------------------------------------------------------

    def log(self, metrics: dict[str, float], step: int) -> None:
        """One history row: the metrics plus our `step` (NaN and inf pass through)."""
        if self._usable():
            self._guard("log", lambda: self.run.log({**metrics, "step": int(step)}))

    def log_heatmap(self, key: str, values: np.ndarray, steps: list[int], title: str) -> None:
        """A layer-by-step image: `values[layer, i]` at `steps[i]`, layer L1 at the bottom."""
        if not self._usable():
            return

        def log_image() -> None:
            import wandb

            image = wandb.Image(_heatmap_png(values, steps, title, colorbar_label=key), caption=title)
            row: dict[str, Any] = {key: image}
            if len(steps) > 0:
                row["step"] = int(steps[-1])
            self.run.log(row)

        self._guard("log_heatmap", log_image)

    def log_line_series(
        self, key: str, steps: list[int], series: dict[str, list[float]], title: str, xname: str = "step"
    ) -> None:
        """All series (e.g. one per layer) against `steps` in one chart."""
        if not self._usable():
            return

        def log_chart() -> None:
            import wandb

            chart = wandb.plot.line_series(
                xs=list(steps),
                ys=[list(map(float, values)) for values in series.values()],
                keys=list(series.keys()),
                title=title,
                xname=xname,
            )
            row: dict[str, Any] = {key: chart}
            if len(steps) > 0:
                row["step"] = int(steps[-1])
            self.run.log(row)

        self._guard("log_line_series", log_chart)

    def finish(self, summary: dict | None = None, exit_code: int = 0) -> None:
        """Write `summary` into the run summary and close the run. Safe to call again."""
        if self.run is None or self._finished:
            return
        self._finished = True
        if summary and not self._broken:
            self._guard("finish", lambda: self.run.summary.update(dict(summary)))
        # Close the run even after a failure, so that it cannot linger into the next job.
        try:
            self.run.finish(exit_code=exit_code)
            if self.where != "disabled" and not _wait_for_record_file(self.run.settings.sync_dir):
                raise TimeoutError(f"record file incomplete {_FLUSH_WAIT_S:.0f} s after finish")
        except Exception as error:
            if not self._broken:
                self._broken = True
                _warn(f"W&B finish failed ({_one_line(error)})")

    # -- failure handling --------------------------------------------------------------------

    def _usable(self) -> bool:
        return self.run is not None and not self._broken and not self._finished

    def _guard(self, what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as error:  # W&B must not stop training
            self._broken = True
            _warn(f"W&B {what} failed ({_one_line(error)}); no more W&B logging for this run")


def _start_run(
    *,
    mode: str,
    run_dir: Path,
    config: dict,
    project: str,
    group: str | None,
    job_type: str,
    name: str | None,
    tags: list[str],
    entity: str | None,
    init_timeout: float,
) -> Any:
    import wandb

    run_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        dir=str(run_dir),
        project=project,
        entity=entity,
        group=group,
        job_type=job_type,
        name=name,
        tags=tags,
        config=config,
        mode=mode,
        # Finish whatever run this process left open, then start a new one
        # (the default, "return_previous", would hand back the old run).
        reinit="finish_previous",
        settings=wandb.Settings(
            init_timeout=init_timeout,
            # Give up on uploads at the end of an online run after this long.
            finish_timeout=init_timeout,
            silent=True,
            console="off",
        ),
    )
    try:
        run.define_metric("step")
        run.define_metric("*", step_metric="step")
    except Exception:
        run.finish(exit_code=1)
        raise
    return run


def _wait_for_record_file(sync_dir: str | Path) -> bool:
    """Wait until wandb-core has flushed the run's record file (its exit record is on disk).

    `run.finish()` only tells wandb-core that the run is over and returns; the
    file is completed a few ms later, and anything that reads the run right
    away (the app, the tests, `wandb sync`) would otherwise see a partial run.
    """
    from testbed.tracking.wandb_offline import has_exit_record

    deadline = time.monotonic() + _FLUSH_WAIT_S
    while True:
        try:
            if has_exit_record(sync_dir):
                return True
        except (FileNotFoundError, ValueError):
            pass  # not created or not complete yet
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def _describe_where(run: Any) -> str:
    settings = run.settings
    if settings.mode == "disabled" or getattr(settings, "_noop", False):
        return "disabled"
    if getattr(settings, "_offline", False):
        return str(settings.sync_dir)
    return run.url or str(settings.sync_dir)


def _heatmap_png(values: np.ndarray, steps: list[int], title: str, colorbar_label: str) -> Any:
    """Render a (n_layers, n_steps) array as a PIL image; log colours when positive values span decades."""
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure
    from PIL import Image

    grid = np.ma.masked_invalid(np.asarray(values, dtype=float))
    if grid.ndim != 2:
        raise ValueError(f"heatmap values must be (n_layers, n_steps); got shape {grid.shape}")
    n_layers, n_steps = grid.shape
    if len(steps) != n_steps:
        raise ValueError(f"{len(steps)} steps for {n_steps} heatmap columns")

    finite = grid.compressed()
    use_log = (
        finite.size > 0
        and finite.min() > 0
        and np.log10(finite.max() / finite.min()) >= _LOG_NORM_MIN_DECADES
    )
    norm = LogNorm(vmin=finite.min(), vmax=finite.max()) if use_log else Normalize()

    fig = Figure(figsize=(8, max(2.5, 0.3 * n_layers + 1.5)), dpi=100)
    ax = fig.add_subplot()
    layers = np.arange(1, n_layers + 1)
    mesh = ax.pcolormesh(np.asarray(steps, dtype=float), layers, grid, norm=norm, shading="nearest")
    ax.set_yticks(layers, [f"L{i}" for i in layers])  # row 0 = L1 drawn at the bottom
    ax.set_xlabel("step")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(mesh, ax=ax, label=colorbar_label + (" (log scale)" if use_log else ""))
    fig.tight_layout()

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    image = Image.open(buffer)
    image.load()
    return image


def open_logger(kind: str, **kwargs: Any) -> NullLogger | WandbLogger:
    """`kind="none"` -> NullLogger; `kind="wandb"` -> WandbLogger(**kwargs), or a NullLogger
    if W&B could not start even offline (a warning says why)."""
    if kind == "none":
        return NullLogger()
    if kind != "wandb":
        raise ValueError(f"logger kind must be 'wandb' or 'none'; got {kind!r}")
    logger = WandbLogger(**kwargs)
    if logger.run is None:
        return NullLogger()
    return logger
