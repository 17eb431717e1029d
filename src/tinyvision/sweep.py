"""The summary of a multirun: every job ranked by best validation accuracy, failures with their error,
the jobs that differ only in their seed or cross-validation fold aggregated (n, mean ± standard deviation), and for an Optuna
sweep the study's result."""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from tinyvision.files import FAILURE_FILE, METRICS_FILE, PRUNED_FILE, STUDY_RESULT, replacing, save_figure, write_atomic


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder: its overrides, status, metrics or error, ranked best first."""
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()), key=lambda p: p.name):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        overrides = [o for o in overrides if not o.startswith("hparams_search.trial=")]  # an Optuna trial's job number is its trial's
        row: dict[str, Any] = {"job": job.name, "overrides": overrides, "run_dir": str(job)}
        if (job / METRICS_FILE).is_file():
            metrics = json.loads((job / METRICS_FILE).read_text())
            row.update(status="done", **{key: metrics.get(key) for key in ("val/acc_best", "test/acc", "epochs", "wall_seconds")})
        elif (job / PRUNED_FILE).is_file():
            pruned = json.loads((job / PRUNED_FILE).read_text())
            row.update(status="pruned", error=f"pruned after epoch {pruned['epochs']} (val acc {_fmt(pruned.get('val/acc'))})",
                       **{key: pruned.get(key) for key in ("val/acc_best", "epochs", "wall_seconds")})
        elif (job / FAILURE_FILE).is_file():
            row.update(status="failed", error=json.loads((job / FAILURE_FILE).read_text())["error"])
        else:
            row.update(status="unfinished")
        rows.append(row)
    varying = _varying_overrides([row["overrides"] for row in rows])
    for row in rows:
        row["varied"] = [o for o in row["overrides"] if o in varying]
        row["overrides"] = " ".join(row["varied"]) or " ".join(row["overrides"])
    return sorted(rows, key=lambda r: (r["status"] != "done", -(r.get("val/acc_best") or 0.0)))


def _varying_overrides(all_overrides: list[list[str]]) -> set[str]:
    """Overrides that are not the same in every job: what the sweep varied."""
    common = set.intersection(*(set(o) for o in all_overrides)) if all_overrides else set()
    return {o for overrides in all_overrides for o in overrides if o not in common}


AGGREGATED = ("val/acc_best", "test/acc", "wall_seconds")


# Overrides whose jobs repeat one configuration: other seeds, other folds of a k-fold cross-validation.
REPEATS = {"seed": "seeds", "data.fold": "folds"}


def _repeat_key(override: str) -> str | None:
    key = override.split("=", 1)[0]
    return key if key in REPEATS else None


def over_repeats(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """When a sweep varies ``seed`` or ``data.fold`` (k-fold cross-validation): one row per configuration of the
    other varied overrides, with n, what it is over (``over``: seeds, folds, or both), the repeats' values and the
    mean and sample standard deviation (None for one job) of each figure over its finished jobs, best first."""
    varied = {_repeat_key(o) for row in rows for o in row.get("varied", [])} - {None}
    if not varied:
        return []
    over = " and ".join(REPEATS[key] for key in REPEATS if key in varied)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "done":
            configuration = " ".join(o for o in row["varied"] if _repeat_key(o) is None)
            groups.setdefault(configuration, []).append(row)
    aggregated = []
    for configuration, members in groups.items():
        repeats = sorted((",".join(o.split("=", 1)[1] for o in m["varied"] if _repeat_key(o)) for m in members),
                         key=lambda value: [int(v) if v.lstrip("-").isdigit() else v for v in value.split(",")])
        result: dict[str, Any] = {"overrides": configuration or "(every job)", "n": len(members), "over": over,
                                  "repeats": " ".join(repeats)}
        for key in AGGREGATED:
            values = [m[key] for m in members if m.get(key) is not None]
            result[f"{key}_mean"] = statistics.fmean(values) if values else None
            result[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        aggregated.append(result)
    return sorted(aggregated, key=lambda r: -(r["val/acc_best_mean"] or 0.0))


def _mean_std(row: dict[str, Any], key: str, digits: int = 4) -> str:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """summary.md, summary.csv and, when a job finished, summary.png in the sweep folder; returns the files written."""
    study = _study_section(sweep_dir)
    repeated = [] if study else over_repeats(rows)  # an Optuna study's trials are not repeats
    columns = ["rank", "job", "status", "overrides", "val/acc_best", "test/acc", "epochs", "wall_seconds", "run_dir", "error"]
    if repeated:
        columns += ["n", "repeats", *(f"{key}_{stat}" for key in AGGREGATED for stat in ("mean", "std"))]
    with replacing(sweep_dir / "summary.csv") as partial, open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for rank, row in enumerate(rows, 1):
            writer.writerow({"rank": rank, **row})
        for row in repeated:  # after the jobs: one row per configuration, over its seeds or folds
            writer.writerow({"job": f"mean of {row['n']}", "status": f"over {row['over']}", **row})
    lines = ["| rank | job | overrides | best val acc | test acc | epochs | seconds | run dir |", "|---:|---|---|---:|---:|---:|---:|---|"]
    failed = [row for row in rows if row["status"] != "done"]
    for rank, row in enumerate((r for r in rows if r["status"] == "done"), 1):
        lines.append(f"| {rank} | {row['job']} | `{row['overrides']}` | {_fmt(row['val/acc_best'])} | {_fmt(row['test/acc'])} | "
                     f"{row['epochs']} | {_fmt(row['wall_seconds'], 1)} | {row['run_dir']} |")
    if failed:
        lines += ["", "Jobs that did not finish:", ""]
        lines += [f"- job {r['job']} ({r['status']}, `{r['overrides']}`): {r.get('error', r['status'])}" for r in failed]
    if repeated:
        over = repeated[0]["over"]
        lines = [f"Over {over} (mean ± sample standard deviation of the finished jobs of each configuration):", "",
                 f"| overrides | n | {over} | best val acc | test acc | seconds |", "|---|---:|---|---:|---:|---:|",
                 *(f"| `{r['overrides']}` | {r['n']} | {r['repeats']} | {_mean_std(r, 'val/acc_best')} | {_mean_std(r, 'test/acc')} | "
                   f"{_mean_std(r, 'wall_seconds', 1)} |" for r in repeated), "", "Every job:", "", *lines]
    write_atomic(sweep_dir / "summary.md", f"# Sweep {sweep_dir.name}\n\n" + study + "\n".join(lines) + "\n")
    written = [sweep_dir / "summary.md", sweep_dir / "summary.csv"]
    picture = sweep_dir / "summary.png"
    picture.unlink(missing_ok=True)  # a summary.png of an earlier session is not this one's
    if repeated:
        _plot_over_repeats(picture, repeated)
    else:
        _plot(picture, [r for r in rows if r["status"] == "done"])  # nothing to draw when no job finished
    return written + ([picture] if picture.is_file() else [])


def _study_section(sweep_dir: Path) -> str:
    """The Optuna study's result, when the sweep was one: best trial, trial counts, plots."""
    if not (sweep_dir / STUDY_RESULT).is_file():
        return ""
    study = yaml.safe_load((sweep_dir / STUDY_RESULT).read_text())
    counts = ", ".join(f"{n} {state}" for state, n in study["trials"].items())
    lines = [f"Optuna study `{study['study_name']}`: {study['direction']} {study['metric']}; trials: {counts}.", ""]
    best = study.get("best")
    if best:
        lines += [f"Best: trial {best['trial']}, {best['metric']} = {best['value']:.4f}, with `{' '.join(best['overrides'])}` "
                  f"(best.yaml). Train it again: `{best['command']}`", ""]
    lines += [f"![{name}]({path})" for name, path in study["plots"].items() if path.endswith(".png")]
    with_folds = [t for t in study.get("trial_list", []) if "fold_values" in t]
    if with_folds:  # hparams_search.folds: each trial's value is the mean over its folds
        lines += ["", f"Each trial over its folds ({study['metric']}; a pruned trial stopped after the folds shown):", "",
                  "| trial | state | params | folds | mean ± std |", "|---:|---|---|---|---:|"]
        for trial in with_folds:
            params = " ".join(f"{key}={value}" for key, value in trial["params"].items())
            score = "-" if "value" not in trial else f"{trial['value']:.4f}"  # a pruned trial's: its folds' mean so far
            score += f" ± {trial['fold_std']:.4f}" if "fold_std" in trial else ""
            lines.append(f"| {trial['number']} | {trial['state']} | `{params}` | "
                         f"{' '.join(f'{v:.4f}' for v in trial['fold_values'])} | {score} |")
    return "\n".join(lines) + "\n\n"


def _fmt(value: Any, digits: int = 4) -> str:
    """A figure of a job that may have none (no validation ran: limit_val_batches=0) as "-"."""
    return "-" if value is None else f"{value:.{digits}f}"


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    rows = rows[::-1]  # the best job at the top
    _bar_pairs(path, [f"{r['job']}: {r['overrides']}"[:60] for r in rows],
               {key: ([r[key] or 0.0 for r in rows], None) for key in ("val/acc_best", "test/acc")}, "accuracy",
               row_height=0.4)


def _plot_over_repeats(path: Path, repeated: list[dict[str, Any]]) -> None:
    """Bars of the mean over seeds or folds, error bars of one standard deviation."""
    rows = repeated[::-1]
    _bar_pairs(path, [f"{r['overrides']} (n={r['n']})"[:60] for r in rows],
               {key: ([r[f"{key}_mean"] or 0.0 for r in rows], [r[f"{key}_std"] or 0.0 for r in rows])
                for key in ("val/acc_best", "test/acc")},
               f"accuracy: mean over {repeated[0]['over']} ± 1 standard deviation", row_height=0.5)


def _bar_pairs(path: Path, labels: list[str], series: dict[str, tuple[list[float], list[float] | None]], xlabel: str,
               row_height: float) -> None:
    """One row of two horizontal bars per label (best val acc above test acc), with error bars where given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"val/acc_best": "best val acc", "test/acc": "test acc"}
    figure, axes = plt.subplots(figsize=(8, 1.4 + row_height * len(labels)))
    positions = range(len(labels))
    for offset, (key, (values, errors)) in zip((0.2, -0.2), series.items()):
        axes.barh([p + offset for p in positions], values, height=0.4, label=names[key], xerr=errors,
                  capsize=3 if errors else 0)
    axes.set_yticks(list(positions), labels, fontsize=8)
    axes.set_xlabel(xlabel)
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)  # above the bars, never over them
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def print_summary(rows: list[dict[str, Any]], sweep_dir: Path, written: list[Path] | None = None) -> None:
    """The table of jobs and, with ``written`` (what write_summary returned), the files it wrote."""
    table = Table("rank", "job", "overrides", "best val acc", "test acc", "seconds", title=f"sweep {sweep_dir}", title_justify="left")
    done = [r for r in rows if r["status"] == "done"]
    for rank, row in enumerate(done, 1):
        table.add_row(str(rank), row["job"], row["overrides"], _fmt(row["val/acc_best"]), _fmt(row["test/acc"]),
                      _fmt(row["wall_seconds"], 1))
    for row in rows:
        if row["status"] == "pruned":
            table.add_row("-", row["job"], row["overrides"], f"[yellow]{_fmt(row['val/acc_best'])} pruned[/]", "",
                          _fmt(row['wall_seconds'], 1), end_section=False)
            table.add_row("", "", f"[yellow]{row['error']}[/]", "", "", "")
        elif row["status"] != "done":
            table.add_row("-", row["job"], row["overrides"], f"[red]{row['status']}[/]", "", "", end_section=False)
            table.add_row("", "", f"[red]{row.get('error', '')}[/]", "", "", "")
    console = Console()
    console.print(table)
    repeated = [] if (sweep_dir / STUDY_RESULT).is_file() else over_repeats(rows)
    if repeated:
        over = Table("overrides", "n", "best val acc", "test acc", "seconds", title=f"over {repeated[0]['over']} (mean ± std)",
                     title_justify="left")
        for row in repeated:
            over.add_row(row["overrides"], str(row["n"]), _mean_std(row, "val/acc_best"), _mean_std(row, "test/acc"),
                         _mean_std(row, "wall_seconds", 1))
        console.print(over)
    if written is None:
        written = [sweep_dir / name for name in ("summary.md", "summary.csv", "summary.png") if (sweep_dir / name).is_file()]
    if written:
        print(f"summary: {', '.join(str(path) for path in written)}")


class SweepSummary(Callback):
    """Hydra callback: after a multirun, write and print the summary; exit 1 if any job failed (in an Optuna
    study, only if no trial completed)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = collect(sweep_dir)
        if not rows:
            return
        written = write_summary(sweep_dir, rows)
        print_summary(rows, sweep_dir, written)
        study = (sweep_dir / STUDY_RESULT).is_file()
        if not study:  # a k-fold sweep's folds, every one finished: the data audit (a study's trials are no folds)
            from tinyvision.audit import audit_at_sweep_end

            audit_at_sweep_end(sweep_dir)
        # In a study, pruned trials are results and failed ones are noted; it fails only when no trial completed.
        unfinished = [row for row in rows if row["status"] != "done" and not (study and row["status"] == "pruned")]
        if unfinished:  # the last line says it, whatever the table above scrolled away
            what = "trials" if study else "jobs"
            print(f"{len(unfinished)} of {len(rows)} {what} did not finish (job {', '.join(r['job'] for r in unfinished)}: "
                  f"{', '.join(sorted({r['status'] for r in unfinished}))}); their errors are in {sweep_dir / 'summary.md'}",
                  flush=True)
        if unfinished and not study or study and not any(row["status"] == "done" for row in rows):
            sys.exit(1)
