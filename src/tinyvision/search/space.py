"""Search spaces and study settings: Hydra's sweep syntax on the command line or in
``hparams_search.params`` turned into Optuna distributions, and settings that would waste a study refused."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.errors import OverrideParseException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from tinyvision.errors import ConfigError
from tinyvision.hparams import SearchSettings
from tinyvision.schema import check

SYNTAX = "choice(a, b), interval(low, high), tag(log, interval(low, high)), int(interval(low, high)) or range(low, high, step)"


def split_overrides(arguments: list[str]) -> tuple[list[str], dict[str, BaseDistribution]]:
    """Command-line overrides split into fixed ones (passed to every trial) and searched ones."""
    fixed, space = [], {}
    for override in _parse(arguments, "the command line"):
        if override.is_sweep_override():
            space[override.get_key_element()] = _distribution(override)
        else:
            fixed.append(override.input_line)
    return fixed, space


def search_space(params: Mapping[str, str] | None) -> dict[str, BaseDistribution]:
    """``hparams_search.params`` ({key: sweep syntax}) as Optuna distributions."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()]
    space = {}
    for override in _parse(lines, "hparams_search.params"):
        if not override.is_sweep_override():
            raise ConfigError(
                f"hparams_search.params: {override.input_line} is not a range to search: write {SYNTAX}, "
                f"or set a fixed value in the experiment or on the command line"
            )
        space[override.get_key_element()] = _distribution(override)
    return space


def _parse(lines: list[str], where: str) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(lines)
    except OverrideParseException as error:
        raise ConfigError(f"{where}: {error}. Search ranges are written {SYNTAX}") from None


def _distribution(override: Override) -> BaseDistribution:
    sweep = override.value()
    key = override.get_key_element()
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not low < high:
            raise ConfigError(f"{key}: interval({low}, {high}) is empty: the low end must be below the high end")
        log = "log" in sweep.tags
        if log and low <= 0:
            raise ConfigError(f"{key}: a log-scale interval must start above 0, not at {low}")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    if isinstance(sweep, RangeSweep):
        values = list(sweep.range())
        if not values:
            raise ConfigError(f"{key}: range({sweep.start}, {sweep.stop}, {sweep.step}) holds no value")
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
            return IntDistribution(values[0], values[-1], step=sweep.step)
        return CategoricalDistribution(values)
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(sweep.list))
    raise ConfigError(f"{override.input_line}: {type(sweep).__name__} is not a search range; write {SYNTAX}")


def trial_overrides(params: Mapping[str, Any]) -> list[str]:
    """A trial's parameters as Hydra overrides (``optimizer.lr=0.0123``, ``optimizer=sgd``)."""
    return [f"{key}={quote(value)}" for key, value in params.items()]


def quote(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    return text if re.fullmatch(r"[\w./:@+-]+", text) else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def refuse_picked_folds(folds: Any, overrides: list[str]) -> None:
    """hparams_search.folds=K sets data.folds and data.fold in each trial's jobs: a command that picks them is refused."""
    picked = [key for key in ("data.folds", "data.fold") if any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides)]
    if folds and picked:
        raise ConfigError(f"hparams_search.folds={folds} trains every fold of each trial (data.folds={folds}, data.fold=0 "
                          f"to {folds - 1}): leave {' and '.join(picked)} out of the command")


def pruning_metric(search: Mapping[str, Any]) -> str | None:
    """What a study's trials report to the pruner: ``prune_on``, where ``auto`` (the default) goes the study's way,
    val/loss when it minimizes and val/acc when it maximizes; null: nothing."""
    value = search.get("prune_on")
    if value != "auto":
        return value
    return "val/loss" if search.get("direction") == "minimize" else "val/acc"


def check_settings(search: Mapping[str, Any]) -> None:
    """Refuse settings that would spend a whole study for nothing (an unknown metric, a pruning metric that goes the
    other way than the study, no trials): the one settings model of ``hparams_search``, as train.py checks it."""
    check(SearchSettings, search, "hparams_search")


# ---------------------------------------------------------------------------------------------- trial side
