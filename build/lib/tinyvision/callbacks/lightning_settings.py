"""The settings tinyvision checks of Lightning's own callbacks (tinyvision's carry a ``Settings`` class)."""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import field_validator, model_validator

from tinyvision.module import LOGGED_METRICS
from tinyvision.schema import ConfigValueError, Open, spec


# Lightning's own callbacks whose settings tinyvision checks (ours carry a ``Settings`` class).
class MonitorSettings(Open):
    """ModelCheckpoint's and EarlyStopping's metric: Lightning finds a misspelt one missing only after the first
    validation, and stops the run there."""

    monitor: str | None = spec("a metric the model logs: " + ", ".join(LOGGED_METRICS), "val/acc", None)
    mode: Literal["min", "max"] = spec("min or max", "max", "min")

    @field_validator("monitor")
    @classmethod
    def _logged(cls, value):
        if value is not None and value not in LOGGED_METRICS:
            close = difflib.get_close_matches(value, LOGGED_METRICS, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigValueError("monitor", value, f"not a metric the model logs; {hint}(it logs {', '.join(LOGGED_METRICS)})",
                                   close[0] if close else "val/acc")
        return value

    @model_validator(mode="after")
    def _direction(self):
        """The best checkpoint of a loss is its lowest, of an accuracy its highest: the other mode keeps the worst."""
        metric = self.monitor or ""
        wanted = "min" if metric.endswith("/loss") else "max" if metric.endswith(("/acc", "/acc_best")) else None
        if wanted is not None and self.mode != wanted:
            raise ConfigValueError("mode", self.mode, f"{wanted} for monitor={metric} (the other way keeps the worst epoch)",
                                   wanted)
        return self


LIGHTNING_CALLBACK_SETTINGS = {
    "lightning.pytorch.callbacks.ModelCheckpoint": MonitorSettings,
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint": MonitorSettings,
    "lightning.pytorch.callbacks.EarlyStopping": MonitorSettings,
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping": MonitorSettings,
}
