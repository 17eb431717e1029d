"""Puts the defaults that tinyvision's settings models declare into Hydra's ConfigStore before any config is composed.

A SearchPathPlugin because Hydra asks every one of them, in every process and for every composition (``train.py``,
the compose API of tests and benchmarks, a launcher's worker), before it reads conf/: conf/model/*.yaml and the data
configs list these nodes (``tinyvision/model/<name>``, ``tinyvision/augment``) in their defaults."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class TinyvisionDefaults(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from tinyvision.config import register_defaults

        register_defaults()  # the search path itself is left as it is: the nodes live in the ConfigStore
