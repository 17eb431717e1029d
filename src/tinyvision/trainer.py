"""Lightning's Trainer made from the ``trainer`` config: the arguments Lightning takes without a check are declared
here (TrainerSettings); an argument Lightning refuses is worded as trainer.KEY=VALUE and the reason."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import hydra.utils
import lightning as L
from hydra.errors import InstantiationException
from pydantic import Field, field_validator, model_validator

from tinyvision import slurm
from tinyvision.errors import ConfigError, first_line
from tinyvision.schema import ConfigValueError, Open, PositiveInt, Section, show, spec


class TrainerSettings(Open):
    """The Trainer arguments Lightning takes without a check; the rest Lightning checks itself."""

    max_epochs: int | None = spec("a whole number, 1 or more (-1: no limit)", 10, None)
    min_epochs: Annotated[int, Field(ge=0)] | None = spec("a whole number, 0 or more", 1, None)
    log_every_n_steps: PositiveInt = spec("a whole number, 1 or more", 50, 50)
    accumulate_grad_batches: PositiveInt = spec("a whole number of batches, 1 or more", 4, 1)
    gradient_clip_val: Annotated[float, Field(gt=0)] | Annotated[int, Field(gt=0)] | None = spec(
        "a positive number, or null (no clipping)", 1.0, None)
    check_val_every_n_epoch: PositiveInt | None = spec("a whole number of epochs, 1 or more", 1, 1)
    # Lightning takes any truthy value here (deterministic=maybe) as true.
    deterministic: bool | Literal["warn"] | None = spec("true, false or warn (deterministic where PyTorch can be, warn where not)",
                                                        True, None)

    strategy: Any = None  # Lightning checks its value; the spawning strategies are refused here

    @field_validator("strategy")
    @classmethod
    def _trains_in_this_process(cls, value):
        """A spawning strategy trains in processes it starts and hands back only the weights and the last metrics: the
        run's record (epochs, history, best checkpoint) stays empty, and a sweep's summary with it."""
        name = value if isinstance(value, str) else (value or {}).get("start_method") if isinstance(value, Mapping) else None
        if isinstance(name, str) and any(word in name for word in ("spawn", "fork", "notebook")):
            raise ConfigValueError("strategy", value, "a strategy whose rank 0 is this process: ddp (it starts the other "
                                   "ranks as processes running this command; on the CPU too, with gloo), or auto; "
                                   "spawned ranks hand back no record of the run", "ddp")
        return value

    @field_validator("max_epochs")
    @classmethod
    def _epochs(cls, value):
        if value is not None and value < 1 and value != -1:
            raise ValueError("")
        return value

    @model_validator(mode="before")
    @classmethod
    def _device_here(cls, values):
        """Lightning's own refusal of a missing GPU names no setting ("No supported gpu backend found!")."""
        accelerator = values.get("accelerator") if isinstance(values, Mapping) else None
        _refuse_a_missing_gpu("accelerator", accelerator, "train on the CPU with trainer=cpu, or let Lightning choose with "
                              "trainer.accelerator=auto")
        return values

    def build(self, callbacks: list, loggers: list, slurm_settings: slurm.SlurmSettings) -> L.Trainer:
        """Lightning's Trainer; an argument Lightning refuses is reported as trainer.KEY=VALUE and the reason."""
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        arguments = self.as_config()
        try:
            environment = slurm.cluster_environment(slurm_settings)  # in a SLURM job: Lightning's, its requeue handler off
            plugins = [hydra.utils.instantiate(p) for p in arguments.get("plugins") or []]
            plugins += [environment] if environment is not None else []
            trainer = hydra.utils.instantiate(arguments, callbacks=callbacks, logger=loggers or False, plugins=plugins)
            if environment is not None:  # what Lightning checks only when DDP launches, inside fit
                environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
            return trainer
        except InstantiationException as error:
            if isinstance(error.__cause__, (MisconfigurationException, ValueError, TypeError, ModuleNotFoundError)):
                raise trainer_error(arguments, error.__cause__) from None
            raise
        except ValueError as error:  # SLURM's task counts do not fit the trainer's devices (Lightning's check)
            devices = arguments.get("devices")
            raise ConfigError(f"trainer.devices={devices}: {first_line(str(error))} Ask SLURM for one task per device "
                              f"(#SBATCH --ntasks-per-node={devices}) and run the command under srun") from None


def make_trainer(settings, callbacks: list, loggers: list) -> L.Trainer:
    """The Trainer of a run's settings (tinyvision.config.RunSettings) with these callbacks and loggers."""
    return settings.trainer.build(callbacks, loggers, settings.slurm)


def _refuse_a_missing_gpu(key: str, accelerator: Any, fix: str) -> None:
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigValueError(key, accelerator, f"no GPU is available here (PyTorch finds no CUDA device): {fix}", "cpu")


class EvalTrainerSettings(Section):
    """eval.py's ``trainer``: where and how the test runs. One device: a test takes seconds, and every rank of a
    several-device test would write the same metrics.json."""

    accelerator: str = spec("auto, cpu, gpu, cuda or mps", "cpu", "auto")
    devices: Literal[1, "1", "auto"] | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=1)] = spec(
        "1, auto, or a list of one device index ([0]): eval.py tests on one device", 1, 1)
    precision: str | int | None = spec("null (32-true), 32, bf16-mixed, 16-mixed, bf16-true, ...", "bf16-mixed", None)
    limit_test_batches: PositiveInt | Annotated[float, Field(gt=0, le=1)] = spec(
        "a number of batches (1 or more) or a fraction from 0 to 1 of the test", 0.1, 1.0)

    @field_validator("accelerator")
    @classmethod
    def _device_here(cls, accelerator):  # only ever eval's trainer section: the key is named from the top
        _refuse_a_missing_gpu("trainer.accelerator", accelerator, "test on the CPU with trainer.accelerator=cpu (or auto)")
        return accelerator


def eval_trainer(settings: EvalTrainerSettings, callbacks: list) -> L.Trainer:
    """The Trainer eval.py tests with; an argument Lightning refuses (a precision it does not know) is one line."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    chosen = settings.model_dump()
    try:
        return L.Trainer(**chosen, logger=False, callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    except (MisconfigurationException, ValueError, TypeError, ModuleNotFoundError) as error:
        raise trainer_error(chosen, error) from None


def trainer_error(trainer_cfg: dict[str, Any], error: Exception) -> ConfigError:
    """Lightning's refusal of a Trainer argument, worded as ``trainer.KEY=VALUE: Lightning's reason``."""
    import inspect

    text = first_line(str(error.__cause__ or error))
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", text)
    if unexpected:
        key = unexpected.group(1)
        known = [p for p in inspect.signature(L.Trainer.__init__).parameters if p != "self"]
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean trainer.{close[0]}?" if close else "see Lightning's Trainer arguments"
        return ConfigError(f"trainer.{key}={show(trainer_cfg.get(key))}: Lightning's Trainer has no such argument; {hint}")
    named = [k for k in trainer_cfg if not k.startswith("_") and re.search(rf"\b{re.escape(k)}\b", text)]
    key = next((k for k in named if show(trainer_cfg[k]) in text or str(trainer_cfg[k]) in text), named[0] if named else None)
    if key is None and isinstance(error, ModuleNotFoundError):  # the accelerator's or strategy's package is missing
        key = "accelerator" if trainer_cfg.get("accelerator") not in (None, "auto", "cpu") else "strategy"
    if key is None and re.search(r"no supported \w+ backend|can not run on your system", text, re.I):
        return ConfigError(f"trainer.accelerator={show(trainer_cfg.get('accelerator'))}: no such device is available here "
                           f"({text.rstrip('.!')}); use trainer=cpu, e.g. trainer.accelerator=cpu")
    examples = {"accelerator": "cpu", "devices": 1, "precision": "bf16-mixed", "strategy": "ddp", "num_nodes": 1}
    if key is None:
        return ConfigError(f"trainer: Lightning refused the Trainer arguments: {text}")
    example = f", e.g. trainer.{key}={examples[key]}" if key in examples else ""
    return ConfigError(f"trainer.{key}={show(trainer_cfg[key])}: {text.rstrip('.')}{example}")
