"""A sweep as one table and a few plots: the library behind ``scripts/aggregate.py``.

The table has one row per job: ``job``, the job's overrides (one column per key, the value as
typed on the command line), ``status``, its ``summary.json`` flattened, and the scalars of its
last logged metrics row as ``last/<key>`` (per-layer keys left out). A job without summary.json
is ``incomplete`` (killed, or still running): never counted or plotted as completed.

The plots: for each swept parameter, the final metric against it, one line per value of at most
one other swept parameter, mean and std over the rest (seeds); diverged jobs are drawn as x
markers, never averaged in. And ||dL/ds^l|| at step 0 against the layer l, one line per group
of jobs that differ only by seed (keys that change nothing before the first step, such as
optim.lr, are merged).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from testbed.tracking.files import atomic_write_bytes, atomic_write_text
from testbed.tracking.sweep import Run, load_sweep

PER_LAYER_KEY = re.compile(r"/L\d+$")
GRAD_S_KEY = re.compile(r"^grad_norm/s/L(\d+)$")
STATUS_ORDER = ("completed", "diverged", "failed", "incomplete")
DIVERGENCE_KEYS = ("diverged_at_step", "last_finite_loss", "diverged_loss")
METRIC_LABELS = {"final/test_acc": "final test accuracy", "final/train_loss": "final train loss",
                 "final/test_loss": "final test loss", "final/train_acc": "final train accuracy"}


class SweepError(ValueError):
    """A sweep folder that cannot be aggregated; the message is one line for the user."""


# ---------------------------------------------------------------------------------------------
# Reading: jobs, override values, the table
# ---------------------------------------------------------------------------------------------

def find_jobs(sweep_dir: str | Path) -> list[Run]:
    """The sweep's jobs, in job order; SweepError if the folder is missing or holds none."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.exists():
        raise SweepError(f"{sweep_dir} does not exist")
    if not sweep_dir.is_dir():
        raise SweepError(f"{sweep_dir} is not a folder")
    runs = load_sweep(sweep_dir)
    if runs:
        return runs
    if (sweep_dir / ".hydra").is_dir():
        raise SweepError(f"{sweep_dir} is a single run, not a sweep (no job folders 0/, 1/, ... in it)")
    nested = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and any(
        (q / ".hydra").is_dir() for q in p.iterdir() if q.is_dir()))
    if nested:
        raise SweepError(f"{sweep_dir} holds no job folders but holds sweeps: pass one of them, "
                         f"e.g. {nested[-1]}")
    raise SweepError(f"{sweep_dir} holds no job folders (0/, 1/, ... with a .hydra folder inside)")


def parse_override_value(text: str) -> Any:
    """An override's value typed as Hydra types it: null, true/false, int, float, else the string."""
    stripped = text.strip()
    if stripped.lower() == "null":
        return None
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    for kind in (int, float):  # float also takes 1e-3, inf, nan
        try:
            return kind(stripped)
        except ValueError:
            pass
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        return stripped[1:-1]
    return stripped


def _number(value: Any) -> Any:
    """Non-finite numbers come back from JSON as the strings "nan", "inf", "-inf"."""
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return value


def _is_scalar_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = _number(value)
    return flat


def _summary_order(key: str) -> tuple:
    """steps, wall_s, final/*, the divergence keys, cmp/*, then the rest; alphabetical within."""
    if key in ("steps", "wall_s"):
        return (0, ("steps", "wall_s").index(key), key)
    if key.startswith("final/"):
        return (1, 0, key)
    if key in DIVERGENCE_KEYS:
        return (2, DIVERGENCE_KEYS.index(key), key)
    if key.startswith("cmp/"):
        return (3, 0, key)
    return (4, 0, key)


def override_keys(runs: list[Run]) -> list[str]:
    """Every override key of the sweep, in the order of the command line."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.overrides))
    return list(keys)


def swept_keys(runs: list[Run]) -> list[str]:
    """The override keys that take more than one value across the jobs."""
    return [key for key in override_keys(runs)
            if len({run.overrides.get(key) for run in runs}) > 1]


def is_seed_key(key: str) -> bool:
    """seed, data.seed, ...: the keys a plot averages over rather than draws."""
    return key.rsplit(".", 1)[-1].endswith("seed")


def table(runs: list[Run]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows): one row per job, values typed; the column order is stable."""
    overrides = override_keys(runs)
    summary_keys: dict[str, None] = {}
    last_keys: dict[str, None] = {}
    rows = []
    for run in runs:
        row: dict[str, Any] = {"job": int(run.path.name) if run.path.name.isdigit() else run.path.name}
        row.update({key: parse_override_value(value) for key, value in run.overrides.items()})
        row["status"] = run.status
        summary = _flatten({k: v for k, v in (run.summary or {}).items() if k != "status"})
        summary_keys.update(dict.fromkeys(summary))
        row.update(summary)
        if run.metrics:
            last = {f"last/{key}": _number(value) for key, value in run.metrics[-1].items()
                    if not PER_LAYER_KEY.search(key) and _is_scalar_number(_number(value))}
            last_keys.update(dict.fromkeys(last))
            row.update(last)
        rows.append(row)
    columns = ["job", *overrides, "status", *sorted(summary_keys, key=_summary_order), *last_keys]
    return columns, rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # full precision; nan, inf, -inf as such
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def _override_text(given: str | None) -> str:
    """The value as typed (1e-3 stays 1e-3), quotes around a string removed."""
    if given is None:
        return ""
    value = parse_override_value(given)
    return value if isinstance(value, str) else given.strip()


def write_csv(path: str | Path, runs: list[Run]) -> list[str]:
    """The table as CSV, written atomically; the override columns hold the text as given."""
    columns, rows = table(runs)
    overrides = set(override_keys(runs))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for run, row in zip(runs, rows, strict=True):
        cells = []
        for column in columns:
            if column in overrides:
                cells.append(_override_text(run.overrides.get(column)))
            else:
                cells.append(_cell(row.get(column)))
        writer.writerow(cells)
    atomic_write_text(path, buffer.getvalue())
    return columns


def status_counts(runs: list[Run]) -> dict[str, int]:
    counts = Counter(run.status for run in runs)
    ordered = {s: counts[s] for s in STATUS_ORDER if counts[s]}
    ordered.update({s: n for s, n in sorted(counts.items()) if s not in ordered})
    return ordered


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------

def _sort_key(value: Any) -> tuple:
    return (0, value, "") if _is_scalar_number(value) else (1, 0, str(value))


def _label(value: Any) -> str:
    return "null" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")


def _title(title: str, notes: list[str], width: int = 80) -> str:
    """The title, then the notes joined by "; ", a new line rather than a note cut in two."""
    lines = [title, ""]
    for note in notes:
        joined = f"{lines[-1]}; {note}" if lines[-1] else note
        if len(joined) <= width or not lines[-1]:
            lines[-1] = joined
        else:
            lines.append(note)
    return "\n".join(textwrap.fill(line, width) for line in lines if line)


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _figure(width: float = 6.4, height: float = 4.6):
    from matplotlib.figure import Figure  # no pyplot: no display backend, no global state

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def default_metric(runs: list[Run]) -> str | None:
    """final/test_acc where any finished job has it, else final/train_loss; None: neither."""
    for metric in ("final/test_acc", "final/train_loss"):
        if any(run.summary and metric in run.summary for run in runs):
            return metric
    return None


def choose_group_key(param: str, swept: list[str], runs: list[Run]) -> str | None:
    """The other swept, non-seed key with the fewest values: one line per value of it."""
    candidates = [key for key in swept if key != param and not is_seed_key(key)]
    if not candidates:
        return None
    return min(candidates, key=lambda key: len({run.overrides.get(key) for run in runs}))


def plot_metric_against(runs: list[Run], param: str, metric: str, out_dir: Path,
                        group_key: str | None, swept: list[str]) -> Path:
    """The final metric against ``param``: a line per value of ``group_key``, mean +- std over
    the other swept keys; diverged jobs as x markers at the bottom, not averaged."""
    value_of = {id(run): {key: parse_override_value(run.overrides.get(key, "null")) for key in swept}
                for run in runs}
    x_values = sorted({value_of[id(r)][param] for r in runs}, key=_sort_key)
    numeric = all(_is_scalar_number(v) for v in x_values)
    position = {v: (v if numeric else i) for i, v in enumerate(x_values)}
    log_x = numeric and min(x_values) > 0 and max(x_values) / min(x_values) > 10
    groups = (sorted({value_of[id(r)][group_key] for r in runs}, key=_sort_key) if group_key else [None])
    averaged = [key for key in swept if key not in (param, group_key)]

    dodge = _dodger(sorted(position.values()), len(groups), log_x)
    fig, ax = _figure()
    colors = [f"C{i % 10}" for i in range(len(groups))]
    diverged_total, max_n = 0, 0
    diverged_marks: list[tuple[float, int, str, int]] = []
    for index, (group, color) in enumerate(zip(groups, colors, strict=True)):
        xs, means, stds = [], [], []
        for x in x_values:
            cell = [r for r in runs if value_of[id(r)][param] == x
                    and (group_key is None or value_of[id(r)][group_key] == group)]
            finals = [float(_number(r.summary[metric])) for r in cell
                      if r.status == "completed" and metric in r.summary]
            finals = [v for v in finals if math.isfinite(v)]
            if finals:
                xs.append(dodge(position[x], index))
                means.append(float(np.mean(finals)))
                stds.append(float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0)
                max_n = max(max_n, len(finals))
            diverged = sum(r.status == "diverged" for r in cell)
            if diverged:
                diverged_total += diverged
                diverged_marks.append((position[x], index, color, diverged))
        label = f"{group_key}={_label(group)}" if group_key else "all jobs"
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=color, label=label)
    if diverged_marks:
        _diverged_strip(ax, diverged_marks, len(groups))

    if log_x:
        ax.set_xscale("log")
    if numeric:
        ax.set_xticks(x_values, [_label(v) for v in x_values])
        ax.minorticks_off()
    else:
        ax.set_xticks(range(len(x_values)), [_label(v) for v in x_values],
                      rotation=30 if max(len(_label(v)) for v in x_values) > 8 else 0)
        ax.set_xlim(-0.5, len(x_values) - 0.5)
    ax.set_xlabel(param + (" (log scale)" if log_x else ""))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    title = f"{METRIC_LABELS.get(metric, metric)} vs {param}"
    notes = [f"mean ± std over {', '.join(averaged)} (n ≤ {max_n})" if averaged and max_n > 1
             else "one job per point"]
    counts = status_counts(runs)
    if diverged_total:
        notes.append(f"× diverged: {diverged_total} of {len(runs)} jobs")
    missing = [f"{counts[s]} {s}" for s in counts if s not in ("completed", "diverged")]
    if missing:
        notes.append(f"not shown: {', '.join(missing)}")
    ax.set_title(_title(title, notes), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, title=None)
    return _save(fig, out_dir / f"{_file_name(metric)}_vs_{_file_name(param)}.png")


def _dodger(positions: list[float], lines: int, log_x: bool):
    """Moves each line's points a little sideways, so that error bars at one x stay apart."""
    coordinates = np.log10(positions) if log_x else np.asarray(positions, dtype=float)
    gap = float(np.min(np.diff(coordinates))) if len(coordinates) > 1 else 1.0
    step = gap * min(0.3 / lines, 0.06)

    def dodge(position: float, line: int) -> float:
        shift = (line - (lines - 1) / 2) * step
        return position * 10**shift if log_x else position + shift

    return dodge


def _diverged_strip(ax, marks: list[tuple[float, int, str, int]], rows: int) -> None:
    """A grey strip under the data holding an x per (position, line) with diverged jobs: no y
    value of its own, so it cannot be read as a result."""
    low, high = ax.get_ylim()
    if low == high:
        low, high = low - 0.5, high + 0.5
    height = 0.07 + 0.05 * rows  # as a fraction of the axes, one row of markers per line
    bottom = low - height * (high - low) / (1 - height)
    ticks = [t for t in ax.get_yticks() if low <= t <= high]  # no y values inside the strip
    ax.set_ylim(bottom, high)
    ax.set_yticks(ticks)
    ax.axhspan(bottom, low, color="0.93", zorder=0)
    ax.text(0.005, height - 0.005, "diverged", transform=ax.transAxes, fontsize=7, color="0.4",
            va="top")
    for x, row, color, count in marks:
        y = 0.025 + 0.05 * row
        ax.plot([x], [y], marker="x", markersize=8, mew=2, color=color, linestyle="none",
                transform=ax.get_xaxis_transform(), clip_on=False)
        if count > 1:
            ax.annotate(f"{count}", (x, y), xycoords=ax.get_xaxis_transform(), xytext=(6, -3),
                        textcoords="offset points", fontsize=7, color=color)
    ax.plot([], [], marker="x", mew=2, color="0.3", linestyle="none", label="diverged (not averaged)")


def step0_grad_norms(run: Run) -> dict[int, float]:
    """||dL/ds^l|| at step 0 by layer l, from the job's first logged row (empty if none)."""
    row = next((r for r in run.metrics if r.get("step") == 0), {})
    norms = {int(m.group(1)): float(_number(v)) for k, v in row.items() if (m := GRAD_S_KEY.match(k))}
    return dict(sorted(norms.items()))


def plot_grad_norm_by_layer(runs: list[Run], out_dir: Path, swept: list[str]) -> Path | None:
    """||dL/ds^l|| at step 0 against l, log y: one line per group of jobs that differ only by seed
    (mean, band min..max); diverged jobs drawn on their own with x markers, not averaged."""
    with_norms = [(run, norms) for run in runs if (norms := step0_grad_norms(run))]
    if not with_norms:
        return None
    seeds = [key for key in swept if is_seed_key(key)]
    group_keys = [key for key in swept if not is_seed_key(key)]
    for key in list(group_keys):  # e.g. optim.lr: no effect before the first step, one line not many
        if _same_at_step0(with_norms, key, [k for k in group_keys if k != key] + seeds):
            group_keys.remove(key)
    merged = [key for key in swept if key not in group_keys and key not in seeds]
    groups: dict[tuple, list[tuple[Run, dict[int, float]]]] = {}
    for run, norms in with_norms:
        group = tuple(parse_override_value(run.overrides.get(key, "null")) for key in group_keys)
        groups.setdefault(group, []).append((run, norms))

    ordered = sorted(groups, key=lambda g: tuple(_sort_key(v) for v in g))
    legend_columns = 1 + (len(ordered) - 1) // 24
    fig, ax = _figure(width=6.4 + (1.8 * legend_columns if len(ordered) > 8 else 0))
    diverged_total, max_layer = 0, 1
    for index, group in enumerate(ordered):
        color = f"C{index % 10}" if len(ordered) <= 10 else _colormap(index / max(len(ordered) - 1, 1))
        linestyle = ("-", "--", ":", "-.")[(index // 10) % 4] if len(ordered) <= 40 else "-"
        label = ", ".join(f"{k}={_label(v)}" for k, v in zip(group_keys, group, strict=True)) or "all jobs"
        healthy = [norms for run, norms in groups[group] if run.status != "diverged"]
        if healthy:
            layers = sorted(set().union(*healthy))
            matrix = np.array([[norms.get(layer, np.nan) for layer in layers] for norms in healthy])
            ax.plot(layers, np.nanmean(matrix, axis=0), marker="o", markersize=3, color=color,
                    linestyle=linestyle, label=label)
            if len(healthy) > 1:
                ax.fill_between(layers, np.nanmin(matrix, axis=0), np.nanmax(matrix, axis=0),
                                color=color, alpha=0.15, linewidth=0)
            max_layer = max(max_layer, layers[-1])
        for run, norms in groups[group]:
            if run.status == "diverged":
                diverged_total += 1
                ax.plot(list(norms), list(norms.values()), marker="x", mew=1.5, color=color,
                        linestyle=":", linewidth=1, label=None if healthy else f"{label} (diverged)")
                max_layer = max(max_layer, max(norms))
    if diverged_total:
        ax.plot([], [], marker="x", mew=1.5, color="0.3", linestyle=":", label="diverged job (not averaged)")

    ax.set_yscale("log")
    ax.set_xlabel("layer l (1 = next to the input)")
    ax.set_ylabel(r"$\Vert\partial L/\partial s^l\Vert$ at step 0")
    if max_layer <= 20:
        ax.set_xticks(range(1, max_layer + 1))
    notes = [f"mean over {', '.join(seeds)} (band: min..max)" if seeds else "one job per line"]
    if merged:
        notes.append(f"same for every {', '.join(merged)}")
    if diverged_total:
        notes.append(f"× diverged: {diverged_total} of {len(runs)} jobs")
    ax.set_title(_title("pre-activation gradient norm by layer at step 0", notes), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if len(ordered) > 8:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=legend_columns)
    else:
        ax.legend(fontsize=8)
    return _save(fig, out_dir / "grad_norm_s_by_layer_step0.png")


def _same_at_step0(with_norms: list[tuple[Run, dict[int, float]]], key: str, others: list[str]) -> bool:
    """Whether jobs that differ only in ``key`` have the same step-0 gradient norms (and some do)."""
    seen: dict[tuple, dict[int, float]] = {}
    compared = False
    for run, norms in with_norms:
        setting = tuple(run.overrides.get(k) for k in others)
        if setting not in seen:
            seen[setting] = norms
            continue
        first = seen[setting]
        if first.keys() != norms.keys() or not np.allclose(
                list(first.values()), list(norms.values()), rtol=1e-9, atol=0, equal_nan=True):
            return False
        compared = True
    return compared


def _colormap(fraction: float):
    from matplotlib import colormaps

    return colormaps["viridis"](0.9 * fraction)


def write_plots(runs: list[Run], out_dir: str | Path, metric: str | None = None,
                group_by: str | None = None) -> list[Path]:
    """Every plot of the sweep into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    swept = swept_keys(runs)
    metric = metric or default_metric(runs)
    written = []
    if metric is not None:
        for param in swept:
            if is_seed_key(param):
                continue  # seeds are averaged over, not an axis
            if group_by is None:
                group_key = choose_group_key(param, swept, runs)
            else:
                group_key = group_by if group_by != param else None
            written.append(plot_metric_against(runs, param, metric, out_dir, group_key, swept))
    grad_plot = plot_grad_norm_by_layer(runs, out_dir, swept)
    if grad_plot is not None:
        written.append(grad_plot)
    return written


# ---------------------------------------------------------------------------------------------
# The whole thing
# ---------------------------------------------------------------------------------------------

@dataclass
class SweepReport:
    sweep_dir: Path
    runs: list[Run]
    csv_path: Path
    columns: list[str]
    plots_dir: Path | None
    plots: list[Path] = field(default_factory=list)
    metric: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        return status_counts(self.runs)

    def describe(self) -> str:
        counts = ", ".join(f"{n} {status}" for status, n in self.counts.items())
        lines = [f"{self.sweep_dir}: {len(self.runs)} jobs ({counts})",
                 f"table: {self.csv_path} ({len(self.runs)} rows, {len(self.columns)} columns)"]
        if self.plots_dir is not None:
            names = ", ".join(p.name for p in self.plots) or "none (nothing swept, no step-0 gradients)"
            lines.append(f"plots: {self.plots_dir}/ ({names})")
            if self.metric is None:
                lines.append("no job has a final metric (none finished): no metric plots")
        return "\n".join(lines)


def aggregate(sweep_dir: str | Path, out: str | Path | None = None, plots_dir: str | Path | None = None,
              plots: bool = True, metric: str | None = None, group_by: str | None = None) -> SweepReport:
    """The sweep's CSV (default SWEEP_DIR/sweep.csv) and plots (default SWEEP_DIR/plots/)."""
    sweep_dir = Path(sweep_dir)
    runs = find_jobs(sweep_dir)
    swept = swept_keys(runs)
    if group_by is not None and group_by not in swept:
        raise SweepError(f"--group-by {group_by!r} is not a swept key; swept: {', '.join(swept) or 'none'}")
    if metric is not None and not any(run.summary and metric in run.summary for run in runs):
        known = sorted({k for run in runs if run.summary for k in run.summary if k.startswith("final/")})
        raise SweepError(f"--metric {metric!r} is in no summary.json; "
                         f"final metrics: {', '.join(known) or 'none'}")
    csv_path = Path(out) if out is not None else sweep_dir / "sweep.csv"
    columns = write_csv(csv_path, runs)
    report = SweepReport(sweep_dir, runs, csv_path, columns, None, metric=metric or default_metric(runs))
    if plots:
        report.plots_dir = Path(plots_dir) if plots_dir is not None else sweep_dir / "plots"
        report.plots = write_plots(runs, report.plots_dir, metric=metric, group_by=group_by)
    return report
