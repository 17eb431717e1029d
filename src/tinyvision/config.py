"""The composed config, checked once: each section by the settings model of the code that uses it, and the defaults
those models declare handed to Hydra, so the YAML files under conf/ hold choices and no second copy of a default.

``validate_train`` (and its siblings for the other scripts) resolves the config once and returns the plain values the
run is built from; a violation is one ConfigError line (tinyvision.schema words it). ``register_defaults`` puts each
architecture's, the augmentation's, and each optimizer's and schedule's defaults into Hydra's ConfigStore as
``tinyvision/model/<name>``, ``tinyvision/augment``, ``tinyvision/callback/<Class>``, ``tinyvision/optimizer/<Class>`` and
``tinyvision/scheduler/<Class>``,
which the YAML files under conf/ list in their defaults: a key keeps its default in one place (for torch's classes,
torch's signature) and can still be overridden without ``+``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from omegaconf import DictConfig
from pydantic import BaseModel, Field

from tinyvision import boundaries, callbacks
from tinyvision.callbacks import LIGHTNING_CALLBACK_SETTINGS
from tinyvision.data.augment import AugmentSettings
from tinyvision.data.datamodule import DataSettings
from tinyvision.errors import ConfigError
from tinyvision.export import ExportSettings
from tinyvision.files import PathsSettings
from tinyvision.hparams import SearchSettings
from tinyvision.inference import EvalSettings, PredictSettings
from tinyvision.loggers import LOGGER_SETTINGS, refuse_missing_logger_package
from tinyvision.models import MODELS, ModelSettings, model_settings
from tinyvision.module import LossSettings
from tinyvision.optim import OPTIMIZERS, SCHEDULERS, Optimizer, WarmupOnly, optimizer_settings, scheduler_settings
from tinyvision.schema import Section, check, defaults_of, locate, one_of, show, spec, to_container, with_signature_defaults
from tinyvision.slurm import SlurmSettings
from tinyvision.trainer import TrainerSettings
from tinyvision.tta import MODES as TTA_MODES

CORES = os.cpu_count() or 1


class TopLevelSettings(Section):
    """The run's own keys (conf/train.yaml), and the groups, each checked by its owner's settings: a key at the top
    that is neither (``+bacth_size=5``) is refused, not carried along unused."""

    model: dict[str, Any]
    data: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None = None
    trainer: dict[str, Any]
    logger: dict[str, Any] | None = None
    callbacks: dict[str, Any] | None = None
    loss: dict[str, Any] | None = None
    hparams_search: dict[str, Any] | None = None

    tta: Literal[TTA_MODES] = spec(one_of(TTA_MODES), "flip", "none")
    threads: Literal["auto"] | Annotated[int, Field(ge=1, le=CORES)] = spec(
        f"auto (this machine's cores shared among the runs training on them) or a number of threads, from 1 to {CORES} "
        "(this machine's cores)", "auto", "auto")
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = spec("a whole number from 0 to 4294967295", 42)
    resume: str | None = spec("the folder of a run under outputs/, or null", "outputs/runs/<run>", None)
    init_from: str | None = spec("null, the folder of a trained run, or a .ckpt file: its weights start this run",
                                 "outputs/runs/<run>", None)
    paths: PathsSettings = spec("data_dir and output_dir", "data", None)
    slurm: SlurmSettings = spec("auto_requeue and requeue_signal", "USR1", None)


@dataclass(frozen=True)
class RunSettings:
    """A training run's settings, checked once (``validate_train``): each section typed by the settings model of the
    code that uses it, chosen by its ``_target_`` where a group has several (models, optimizers, schedules), and each
    builds its own object (``model`` the network, ``optimizer`` and ``scheduler`` theirs, ``data`` the data module,
    ``trainer`` Lightning's Trainer). Callbacks and loggers are instantiated by Hydra from their checked sections:
    their keys are their classes' arguments. ``config`` is the plain resolved config the sections were checked from,
    saved with each checkpoint and compared across runs."""

    model: ModelSettings
    data: DataSettings
    optimizer: Optimizer
    scheduler: WarmupOnly | None  # a Scheduler, or WarmupOnly for a constant lr
    loss: LossSettings
    trainer: TrainerSettings
    callbacks: dict[str, dict[str, Any]]  # by name; a section set to null is left out
    logger: dict[str, dict[str, Any]]
    search: SearchSettings | None
    paths: PathsSettings
    slurm: SlurmSettings
    seed: int
    tta: str
    threads: int | str
    resume: str | None
    init_from: str | None
    config: dict[str, Any] = field(repr=False)


@functools.cache
def _settings_of(target: str | None) -> type[BaseModel] | None:
    """The ``Settings`` a tinyvision callback class (or factory) carries, its defaults taken from its signature."""
    if not target or not target.startswith("tinyvision."):
        return None
    try:
        owner = locate(target)
    except (ImportError, AttributeError):  # a target that does not import: _check_targets names it
        return None
    settings = getattr(owner, "Settings", None)
    return with_signature_defaults(settings, owner) if settings is not None else None


def _check_targets(values: Mapping[str, Any]) -> None:
    """Every ``_target_`` a run instantiates names something that imports: Hydra's own refusal comes as it builds the
    run, in three lines and exit status 1 ("Error locating target ...")."""
    sections = [("model", values.get("model")), ("optimizer", values.get("optimizer")), ("scheduler", values.get("scheduler"))]
    for group in ("callbacks", "logger"):
        sections += [(f"{group}.{name}", section) for name, section in (values.get(group) or {}).items()]
    for key, section in sections:
        target = section.get("_target_") if isinstance(section, Mapping) else None
        if not isinstance(target, str):
            continue
        try:
            locate(target)
        except (ImportError, AttributeError) as cause:
            reason = f"{type(cause).__name__}: {str(cause).splitlines()[0]}" if str(cause).strip() else type(cause).__name__
            raise ConfigError(f"{key}._target_={target}: it cannot be imported ({reason}); check its spelling, or put its "
                              "module on the Python path (PYTHONPATH=/folder/of/the/module)") from None


def validate_train(cfg: DictConfig, look_outside: bool = True, checked_by_caller: tuple[str, ...] = ()) -> RunSettings:
    """Check every tinyvision key of a composed train config; returns the run's settings, which the run is built from.
    ``look_outside=False`` leaves out what the file system and the network say (a sweep's jobs checked beforehand);
    ``checked_by_caller`` names top-level sections another script adds and checks (find_lr.py's ``lr_find``)."""
    values = to_container(cfg)
    if "ckpt_path" in values:  # the template's way to continue a run: tinyvision's has its own key
        raise ConfigError(f"ckpt_path={show(values['ckpt_path'])}: train.py continues a run from its folder: "
                          "resume=outputs/runs/<run> (its checkpoints/last.ckpt); eval.py takes ckpt_path= to test a checkpoint")
    _check_targets(values)
    top = check(TopLevelSettings, {k: v for k, v in values.items() if k not in checked_by_caller}, "")
    loss = check(LossSettings, values.get("loss") or {}, "loss")
    model = model_settings(values["model"])
    data = check(DataSettings, values["data"], "data")
    optimizer = optimizer_settings(values["optimizer"])
    scheduler = scheduler_settings(values.get("scheduler"))
    trainer = check(TrainerSettings, values["trainer"], "trainer")
    callbacks = {name: section for name, section in (values.get("callbacks") or {}).items() if section is not None}
    for name, section in callbacks.items():
        target = section.get("_target_")
        settings = _settings_of(target) or LIGHTNING_CALLBACK_SETTINGS.get(target)
        if settings is not None:
            check(settings, section, f"callbacks.{name}")
        if target in LIGHTNING_CALLBACK_SETTINGS:
            _monitor_is_logged_then(name, section, values)
    loggers = {name: section for name, section in (values.get("logger") or {}).items() if section is not None}
    for name, section in loggers.items():
        refuse_missing_logger_package(name, section.get("_target_"))
        if section.get("_target_") in LOGGER_SETTINGS:
            check(LOGGER_SETTINGS[section["_target_"]], section, f"logger.{name}")
    search = None
    if values.get("hparams_search") is not None:
        search = check(SearchSettings, values["hparams_search"], "hparams_search")
    # Last, once every value is of its kind: what the file system and the network say (nothing is written).
    if look_outside:
        # a path through a file ends in a library's NotADirectoryError, for checkpoints only when the first is written
        # (a shared read-only data folder that already holds the data is fine: only its path is checked)
        boundaries.output_folder("paths.data_dir", values["paths"]["data_dir"], example="data", writable=False)
        for name, section in callbacks.items():
            if isinstance(section.get("dirpath"), str):
                boundaries.output_folder(f"callbacks.{name}.dirpath", section["dirpath"], example="outputs/checkpoints")
        counted = boundaries.check_data(values["data"])  # a folder's classes counted where data.num_classes is null
        if counted is not None:
            values["data"]["num_classes"] = counted
            data = data.model_copy(update={"num_classes": counted})
        boundaries.check_loggers(loggers)
    if isinstance(loss.class_weights, list) and data.num_classes is not None and len(loss.class_weights) != data.num_classes:
        raise ConfigError(f"loss.class_weights={show(values['loss']['class_weights'])}: one weight per class ({data.num_classes} for "
                          f"data.num_classes={data.num_classes}), e.g. loss.class_weights=auto")
    return RunSettings(model=model, data=data, optimizer=optimizer, scheduler=scheduler, loss=loss, trainer=trainer,
                       callbacks=callbacks, logger=loggers, search=search, paths=top.paths, slurm=top.slurm, seed=top.seed,
                       tta=top.tta, threads=top.threads, resume=top.resume, init_from=top.init_from, config=values)


def _monitor_is_logged_then(name: str, section: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """A logged metric that is not logged yet when the callback reads it stops the run after its first validation."""
    metric, key = section.get("monitor"), f"callbacks.{name}.monitor"
    if metric is None:
        return
    if metric.startswith("test/") and not values["data"].get("test_every_epoch"):
        raise ConfigError(f"{key}={metric}: test metrics are logged during training only with data.test_every_epoch=true; "
                          f"add it, or monitor a validation metric, e.g. {key}=val/acc")
    interval = values["trainer"].get("val_check_interval")
    if metric.startswith("train/") and interval not in (None, 1.0):
        raise ConfigError(f"{key}={metric}: train metrics are logged at the end of each epoch, after the validation that "
                          f"trainer.val_check_interval={show(interval)} runs within it; monitor a validation metric, "
                          f"e.g. {key}=val/acc")


def validate_eval(cfg: DictConfig) -> EvalSettings:
    """eval.py's settings, typed; ``data`` (checked as training's, or null: the checkpoint's) and ``paths`` ride along."""
    values = to_container(cfg)
    settings = check(EvalSettings, values, "")
    if values.get("data"):
        check(DataSettings, values["data"], "data")
        boundaries.check_data(values["data"])
    return settings


def validate_predict(cfg: DictConfig) -> PredictSettings:
    values = to_container(cfg)
    return check(PredictSettings, values, "")


def validate_export(cfg: DictConfig) -> ExportSettings:
    values = to_container(cfg)
    return check(ExportSettings, values, "")


def defaults_nodes() -> dict[str, dict[str, Any]]:
    """The defaults that the settings models declare, by the path of their node under conf/: each architecture's
    (``tinyvision/model/<name>``), the augmentation's (``tinyvision/augment``), each callback's that carries Settings
    (``tinyvision/callback/<Class>``) and each optimizer's and schedule's (``tinyvision/<group>/<Class>``: torch's
    signature defaults and tinyvision's)."""
    nodes = {f"tinyvision/model/{name}": defaults_of(registered.settings) for name, registered in MODELS.items()}
    nodes["tinyvision/augment"] = defaults_of(AugmentSettings)
    for name in callbacks.__all__:
        settings = _settings_of(f"tinyvision.callbacks.{name}")
        if settings is not None:
            nodes[f"tinyvision/callback/{name}"] = {"_target_": f"tinyvision.callbacks.{name}", **defaults_of(settings)}
    for group, known in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS)):
        for target, settings in known.items():
            nodes[f"tinyvision/{group}/{target.rsplit('.', 1)[-1]}"] = defaults_of(settings)
    return nodes


GENERATED_HEADER = ("# Written by `python -m tinyvision.config` from the settings model in the code, where the defaults live:\n"
                    "# do not edit. tests/test_compose.py fails when this file and the code disagree.\n")


def defaults_files() -> dict[str, str]:
    """Each node of ``defaults_nodes`` as the text of its YAML file under conf/. Files, not ConfigStore nodes
    registered at start-up: composing a config (a typo's answer, --help) then reads YAML alone, without importing
    torch and Lightning to reach the settings models (about 4 s of every answer)."""
    from omegaconf import OmegaConf

    return {f"{path}.yaml": GENERATED_HEADER + OmegaConf.to_yaml(OmegaConf.create(node), sort_keys=False)
            for path, node in defaults_nodes().items()}


def write_defaults_files(conf_dir: Path) -> list[Path]:
    """Write ``defaults_files`` under ``conf_dir``, removing generated files of nodes that no longer exist."""
    wanted = defaults_files()
    written = []
    for path in sorted((conf_dir / "tinyvision").rglob("*.yaml")):
        if str(path.relative_to(conf_dir)) not in wanted and path.read_text().startswith(GENERATED_HEADER):
            path.unlink()
    for relative, text in wanted.items():
        path = conf_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


if __name__ == "__main__":
    for changed in write_defaults_files(Path(__file__).parent / "conf"):
        print(f"wrote {changed}")
