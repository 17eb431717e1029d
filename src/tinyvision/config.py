"""Checks on a composed config that fail before any data is read or any run dir is filled."""

from __future__ import annotations

from numbers import Number

from omegaconf import DictConfig

from tinyvision.errors import ConfigError


def check(cfg: DictConfig) -> None:
    """Raise ConfigError naming the key, the value and what is allowed."""
    lr = cfg.optimizer.get("lr")
    if not isinstance(lr, Number) or isinstance(lr, bool) or not lr > 0:
        raise ConfigError(f"optimizer.lr={lr} is not allowed: the learning rate must be a positive number, e.g. optimizer.lr=0.01")
    for key in ("batch_size", "eval_batch_size"):
        value = cfg.data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"data.{key}={value} is not allowed: it must be a whole number of images, 1 or more")
    val_size = cfg.data.get("val_size")
    if isinstance(val_size, bool) or not (
        (isinstance(val_size, int) and val_size >= 1) or (isinstance(val_size, float) and 0 < val_size < 1)
    ):
        raise ConfigError(
            f"data.val_size={val_size} is not allowed: give a number of images (1 or more) or a fraction between 0 and 1"
        )
    epochs = cfg.trainer.get("max_epochs")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1) and epochs != -1:
        raise ConfigError(f"trainer.max_epochs={epochs} is not allowed: it must be 1 or more (or -1 for no limit)")
