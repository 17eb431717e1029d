"""The hyperparameters a person compares across runs, and the result metrics shown beside them.

Every logger gets this curated set (TensorBoard's HPARAMS tab, MLflow's params, the CSV logger's
hparams.yaml) instead of the whole composed config: the chosen option of each group and the values that
shape training, never a ``_target_``, a callback, a logger, a path or a Hydra internal. The whole config
is still kept in the run's .hydra/config.yaml and in every checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from tinyvision import boundaries
from tinyvision.schema import ConfigValueError, Open, PositiveInt, one_of, spec

GROUPS = ("experiment", "model", "data", "optimizer", "scheduler")
# Model keys that change speed or where weights come from, not what is trained.
MODEL_KEYS_LEFT_OUT = {"channels_last", "compile", "weights_path"}
DATA_KEYS = ("batch_size", "image_size", "channels", "val_size", "train_size")
TRAINER_KEYS = ("max_epochs", "precision", "devices", "accumulate_grad_batches", "gradient_clip_val")
# The columns TensorBoard's HPARAMS view shows before any is ticked (it shows the first five of its order).
HEADLINE = ("model", "data", "data/batch_size", "optimizer/lr", "seed")
# The figures at the top of a finished run's metrics.json, which a search can optimize.
SUMMARY_METRICS = ("val/acc_best", "val/acc", "val/loss", "test/acc", "test/loss")
PRUNE_ON = ("auto", "val/acc", "val/loss", None)  # logged every validation epoch; auto: the study's way; None: no pruning
# The figures a finished run has; HPARAMS reads each from the run's scalars of the same name.
RESULT_METRICS = (*SUMMARY_METRICS, "run/train_seconds", "run/epochs")


def group_choices() -> dict[str, str | None]:
    """The option chosen in each config group, as Hydra recorded it (empty outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {key: value for key, value in HydraConfig.get().runtime.choices.items() if not key.startswith("hydra")}


def compared_hparams(config: Mapping[str, Any], choices: Mapping[str, str | None]) -> dict[str, Any]:
    """Flat ``group/key`` → number, string or bool, from the resolved config and the group choices."""
    flat: dict[str, Any] = {}
    for group in GROUPS:
        flat[group] = choices.get(group) or _option_from_target(config.get(group)) or "none"
    for key, value in (config.get("model") or {}).items():
        if not key.startswith("_") and key not in MODEL_KEYS_LEFT_OUT:
            flat[f"model/{key}"] = value
    data = config.get("data") or {}
    for key in DATA_KEYS:
        if key in data:
            flat[f"data/{key}"] = data[key]
    for key, value in (data.get("augment") or {}).items():
        flat[f"augment/{key}"] = value
    for key, value in (config.get("loss") or {}).items():
        if not key.startswith("_"):
            flat[f"loss/{key}"] = value
    for group in ("optimizer", "scheduler"):
        for key, value in (config.get(group) or {}).items():
            if not key.startswith("_"):
                flat[f"{group}/{key}"] = value
    trainer = config.get("trainer") or {}
    for key in TRAINER_KEYS:
        if trainer.get(key) is not None:
            flat[f"trainer/{key}"] = trainer[key]
    flat["seed"] = config.get("seed")
    if config.get("init_from"):
        flat["init_from"] = config["init_from"]  # the trained run a fine-tuned run started from
    return {key: _scalar(value) for key, value in flat.items()}


def _option_from_target(section: Any) -> str | None:
    """A group's option when Hydra did not record it (a config composed by hand): its class name."""
    if isinstance(section, Mapping) and section.get("_target_"):
        return str(section["_target_"]).rsplit(".", 1)[-1]
    return None


def _scalar(value: Any) -> int | float | str | bool:
    """What every logger can show: numbers, strings and bools as they are; lists and null as text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


class SearchSettings(Open):
    """``hparams_search``: an Optuna study over train configs (tinyvision.search runs it)."""

    metric: Literal[SUMMARY_METRICS] = spec(one_of(SUMMARY_METRICS), "val/acc_best")
    direction: Literal["maximize", "minimize"] = spec("maximize or minimize", "maximize")
    prune_on: Literal[PRUNE_ON] = spec(one_of(PRUNE_ON), "val/acc", "auto")
    n_trials: PositiveInt = spec("a whole number, 1 or more", 4)
    n_jobs: int = spec("a whole number, 1 or more (-1: one per CPU core)", 1, 1)
    params: dict[str, Any] = spec("key: range pairs", "{}", {})
    enqueue: list[dict[str, Any]] = spec("a list of parameter sets", "[]", [])
    storage: str | None = spec("null or a database URL", "sqlite:///study.db", None)
    study_name: str | None = spec("null or a name", "lenet", None)
    resume: str | None = spec("null or a sweep folder", "outputs/multirun/<sweep>", None)
    shared: bool = spec("true or false", True, False)
    heartbeat_seconds: Annotated[float, Field(ge=1)] | PositiveInt = spec("a number of seconds, 1 or more", 10, 10.0)
    folds: Annotated[int, Field(ge=2)] | None = spec("null or a whole number of folds, 2 or more", 5, None)
    trial: int | None = spec("set by the sweeper", 0, None)

    @model_validator(mode="after")
    def _the_studys_way(self):
        """A metric that goes the other way than the study would spend it for nothing: it would keep the worst trials
        (``metric``), or prune the best (``prune_on``)."""
        for key in ("metric", "prune_on"):
            value = getattr(self, key)
            if value not in (None, "auto") and ("loss" in value) == (self.direction == "maximize"):
                raise ConfigValueError(key, value, f"it goes the other way than hparams_search.direction={self.direction}: "
                                       "val/acc or val/acc_best when maximizing accuracy, val/loss when minimizing a loss",
                                       "val/loss" if self.direction == "minimize" else "val/acc")
        return self

    @field_validator("n_jobs")
    @classmethod
    def _jobs(cls, value):
        if value < 1 and value != -1:
            raise ValueError("")
        return value

    @field_validator("storage")
    @classmethod
    def _database(cls, value):
        """A URL SQLAlchemy cannot use (bogus://x) fails in SQLAlchemy with NoSuchModuleError; no connection is made here."""
        if value is None or value.startswith("journal:"):  # Optuna's journal file: checked when it is opened
            return value
        problem = boundaries.database_url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value
