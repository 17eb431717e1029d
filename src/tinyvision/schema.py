"""The engine that checks config values and words a violation as one line, for every owner's settings model.

Each config section's settings model stands beside the code that uses it (a model's beside the model, augmentation's
in data/augment.py, the trainer's in trainer.py); tinyvision.config gathers them. Here are the pieces they are made
of: ``spec`` gives a field its rule in words and an example, ``Section``/``Open``/``Target`` the strictness, and ``check`` turns
pydantic's first violation into one ConfigError line: ``KEY=VALUE: what is allowed, e.g. KEY=example``. pydantic
rather than Hydra structured configs because its ranges, unions and cross-field checks are declarations, where
OmegaConf's structured configs check types only.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from tinyvision.errors import ConfigError


def one_of(values: Sequence[Any]) -> str:
    """The allowed values in words, from the owning module's constant: 'none, flip or flip_translate'."""
    words = ["null" if value is None else str(value) for value in values]
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else words[0]


def spec(allowed: str, example: Any, default: Any = ..., **constraints: Any) -> Any:
    """A field with its rule in words and an example value, both used in the error line."""
    return Field(default, description=allowed, json_schema_extra={"example": example}, **constraints)


class Section(BaseModel):
    """Strict types (no "3" for 3, no true for 1), finite numbers (no inf, no nan: a library takes them and fails an
    epoch later), and unknown keys refused (a misspelt ``+key``). Subclasses' model_config merge into this one."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)

    def as_config(self) -> dict[str, Any]:
        """The section as the plain values it was checked from (config names, ``_target_`` included; a key the config
        left out stays out): what a checkpoint keeps, so that it loads without tinyvision's classes."""
        return self.model_dump(by_alias=True, exclude_unset=True)


class Open(Section):
    """A section whose other keys belong to a class we do not know (a user's own model or optimizer)."""

    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True, allow_inf_nan=False)


PositiveInt = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0, le=1)]
NonNegative = Annotated[float, Field(ge=0)] | Annotated[int, Field(ge=0)]  # strict mode: 1 and 1.0 both
# Whole-number ends of a range written as ints (0 for 0.0, 1 for 1.0): strict ints, so true and false are refused
# (a Literal[0, 1] would take true for 1).
ZeroOrOne = Annotated[int, Field(ge=0, le=1)]
Zero = Annotated[int, Field(ge=0, le=0)]


class Target(Section):
    """A section Hydra instantiates whose keys are all its class's arguments (a tinyvision callback): a misspelt one
    added with ``+`` is refused here, not by the constructor's TypeError when the run is built."""

    target: str | None = Field(None, alias="_target_")




class ConfigValueError(ValueError):
    """A cross-field rule broken inside a model validator, naming its own key."""

    def __init__(self, key: str, value: Any, allowed: str, example: Any):
        super().__init__(allowed)
        self.key, self.value, self.allowed, self.example = key, value, allowed, example


def show(value: Any) -> str:
    """A value written as it would be typed on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _field_spec(model: type[BaseModel], path: Sequence[Any]) -> tuple[list[str], str | None, Any]:
    """The keys of ``path`` that name fields (pydantic adds union branches and list indexes), with the
    description and example of the deepest field."""
    keys, allowed, example = [], None, None
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", None) if isinstance(current, type) else None
        if not fields:
            break
        name = next((n for n, f in fields.items() if part in (n, f.alias)), None)
        if name is None:
            break
        field = fields[name]
        keys.append(field.alias or name)
        allowed = field.description
        example = (field.json_schema_extra or {}).get("example") if isinstance(field.json_schema_extra, dict) else None
        annotation = field.annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return keys, allowed, example


def _lookup(values: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        values = values.get(key) if isinstance(values, Mapping) else None
    return values


def check(model: type[BaseModel], values: Mapping[str, Any], prefix: str) -> BaseModel:
    """Validate ``values`` (the config section at ``prefix``) or raise one ConfigError line."""
    if not isinstance(values, Mapping):  # a section written as one value (a hand-edited checkpoint: optimizer: null)
        raise ConfigError(f"{prefix or 'the config'}={show(values)}: a section of key: value settings, e.g. {prefix}.KEY=VALUE")
    try:
        return model.model_validate(dict(values))
    except ValidationError as error:
        problem = error.errors()[0]
        quoted = _quoted_value(model, values, prefix, problem)
        raise ConfigError(quoted or _message(model, values, prefix, problem)) from None


def _typed(text: str) -> tuple[bool, Any]:
    """What a quoted command-line value would be without its quotes: a number, true, false or null."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return True, lowered == "true"
    if lowered == "null":
        return True, None
    for kind in (int, float):
        try:
            return True, kind(text)
        except ValueError:
            continue
    return False, None


def _quoted_value(model: type[BaseModel], values: Mapping[str, Any], prefix: str, problem: dict) -> str | None:
    """A number (or true/false/null) written in quotes is text, and the schema's "a positive number" would read as
    nonsense beside optimizer.lr='0.1': say it is text, and whether the same value unquoted is allowed."""
    keys, allowed, example = _field_spec(model, problem["loc"])
    value = _lookup(values, keys)
    if not keys or not isinstance(value, str) or problem["type"] == "extra_forbidden":
        return None
    readable, typed = _typed(value)
    if not readable:
        return None
    name = ".".join([prefix, *keys] if prefix else keys)
    changed = _replaced(values, keys, typed)
    try:
        model.model_validate(changed)
        still_wrong = False
    except ValidationError as error:
        still_wrong = any(_field_spec(model, p["loc"])[0] == keys for p in error.errors())
    if not still_wrong:
        return (f"{name}='{value}': '{value}' is text (quoted, or from ${{oc.env:...}}, which always gives text): write "
                f"{name}={show(typed)} without quotes, or let the shell put a variable's number in ({name}=$VAR) "
                f"({allowed or 'a value'})")
    return f"{name}='{value}': '{value}' is text, and {show(typed)} unquoted is not allowed either: {allowed}, e.g. {name}={show(example)}"


def _replaced(values: Mapping[str, Any], keys: Sequence[str], new: Any) -> dict[str, Any]:
    copied = dict(values)
    if len(keys) == 1:
        copied[keys[0]] = new
    else:
        copied[keys[0]] = _replaced(copied.get(keys[0]) or {}, keys[1:], new)
    return copied


def _message(model: type[BaseModel], values: Mapping[str, Any], prefix: str, problem: dict) -> str:
    cause = (problem.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigValueError):  # a cross-field rule: it names its key itself
        key = f"{prefix}.{cause.key}" if prefix else cause.key
        example = "" if cause.example is ... else f", e.g. {key}={show(cause.example)}"  # ...: a key to remove
        return f"{key}={show(cause.value)}: {cause.allowed}{example}"
    keys, allowed, example = _field_spec(model, problem["loc"])
    name = ".".join([prefix, *keys] if prefix else keys)
    if problem["type"] == "extra_forbidden":
        unknown = str(problem["loc"][-1])
        container = _field_spec(model, problem["loc"][:-1])[0]
        section = model
        for key in container:
            section = next(f.annotation for n, f in section.model_fields.items() if key in (n, f.alias))
        known = [f.alias or n for n, f in section.model_fields.items() if not (f.alias or n).startswith("_")]
        full = ".".join([p for p in (prefix, *container) if p] + [unknown])
        close = difflib.get_close_matches(unknown, known, n=1)
        hint = f"did you mean {full.rsplit('.', 1)[0] + '.' if '.' in full else ''}{close[0]}?" if close else \
            f"the keys here are {', '.join(known)}"
        return f"{full}={show(_lookup(values, [*container, unknown]))}: no such key; {hint}"
    if problem["type"] == "missing":
        if example is None and len(keys) == 1:  # a config group removed (~model): its options, not "model=null"
            options = sorted(path.stem for path in (Path(__file__).parent / "conf" / name).glob("*.yaml"))
            if options:
                return f"{name} is required: choose one of {', '.join(options)}, e.g. {name}={options[0]}"
        return f"{name} is required: set it, e.g. {name}={show(example)}"
    value = _lookup(values, keys)
    detail = ""
    if isinstance(cause, ValueError) and str(cause).strip() and allowed and str(cause) not in allowed:
        detail = f" ({cause})"
    if problem["type"] == "finite_number":
        detail = " (a finite number: not inf or nan)"
    return f"{name}={show(value)}: {allowed or problem['msg']}{detail}, e.g. {name}={show(example)}"


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain values; a missing required value (``???``) is named with its fix. A config composed
    with its hydra node (compose(..., return_hydra_config=True), as the template's tests do) is read without it: the
    node is Hydra's, and some of its values are only set inside a launched job."""
    if "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        key = error.full_key
        example = {"data.root": "/path/to/images", "ckpt_path": "outputs/runs/<run>/checkpoints/best.ckpt",
                   "inputs": "photo.png"}.get(key, "VALUE")
        raise ConfigError(f"{key}=??? is required: give it on the command line, e.g. {key}={example}") from None
    except InterpolationResolutionError as error:
        raise ConfigError(_interpolation_message(cfg, error)) from None


def _interpolation_message(cfg: DictConfig, error: InterpolationResolutionError) -> str:
    """OmegaConf's message has three lines (the reason, full_key, object_type) and the reason in a wrapper
    ("KeyError raised while resolving interpolation: ..."): one line, naming the key and the text typed."""
    key = error.full_key
    parent, _, leaf = key.rpartition(".")
    try:  # the text as typed, unresolved (resolving it is what failed): OmegaConf has no public read of it
        node = (OmegaConf.select(cfg, parent) if parent else cfg)._get_node(leaf)
        typed = node._value() if node is not None else None
    except Exception:  # a key OmegaConf cannot walk to without resolving: name it without its text
        typed = None
    reason = str(error.msg).strip().splitlines()[0] if str(error.msg).strip() else type(error).__name__
    reason = re.sub(r"^\w+ raised while resolving interpolation: ", "", reason).strip().strip('"')
    variable = re.search(r"Environment variable '([^']+)' not found", reason)
    shown = f"{key}={typed}" if typed is not None else key
    if variable:
        name = variable.group(1)
        return (f"{shown}: the environment variable {name} is not set: set it (export {name}=...), give a default "
                f"(${{oc.env:{name},VALUE}}) or give the value itself, e.g. {key}=VALUE")
    return f"{shown}: {reason}: correct the ${{...}} interpolation, or give the value itself, e.g. {key}=VALUE"


def locate(target: str) -> Any:
    """The object a dotted ``_target_`` names, imported; ModuleNotFoundError or AttributeError when there is none.
    Not hydra.utils.get_object: it logs its own error lines before raising."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        try:
            found = importlib.import_module(name)
            break
        except ModuleNotFoundError as error:
            if error.name is None or not name.startswith(error.name):
                raise  # the module exists and fails to import something else: that is its own error
    else:
        raise ModuleNotFoundError(f"No module named '{parts[0]}'", name=parts[0])
    for part in parts[end:]:
        found = getattr(found, part)
    return found


def instantiate(target: str, arguments: Mapping[str, Any], *positional: Any) -> Any:
    """``target`` called with ``positional`` and ``arguments``, through Hydra's instantiate: its policy refuses targets
    that run code by themselves (os.system, eval, ...), which a checkpoint or a command line could name. The cause of
    its InstantiationException is raised as it is, for the caller to word."""
    import hydra.utils
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate({"_target_": target, **arguments}, *positional, _convert_="all")
    except InstantiationException as error:
        if error.__cause__ is not None:
            raise error.__cause__ from None
        reason = " ".join(str(error).split()).split(". ")[0]  # Hydra's policy, in one line (its own is four)
        raise ConfigError(f"_target_={target}: Hydra refuses to call it ({reason}): name a class, e.g. a model class of "
                          "tinyvision.models") from None


def by_target(section: Mapping[str, Any], known: Mapping[str, type[BaseModel]], fallback: type[BaseModel]) -> type[BaseModel]:
    """The settings model of a section whose ``_target_`` names the class it configures."""
    return known.get(section.get("_target_") if isinstance(section, Mapping) else None, fallback)


def with_signature_defaults(settings: type[BaseModel], function: Any) -> type[BaseModel]:
    """``settings`` whose fields without a default take the default of ``function``'s parameter of the same name:
    a constructor's signature stays the one place a default is written (LightningCLI's rule), and the settings
    model adds only what is allowed and an example."""
    parameters = inspect.signature(function).parameters
    filled: dict[str, Any] = {}
    for name, field in settings.model_fields.items():
        parameter = parameters.get(name)
        if field.is_required() and parameter is not None and parameter.default is not inspect.Parameter.empty:
            default = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
            if isinstance(default, int) and not isinstance(default, bool) and "float" in str(field.annotation):
                default = float(default)  # torch writes momentum=0: the config shows 0.0, as a float setting is typed
            filled[name] = (field.annotation, FieldInfo.merge_field_infos(field, default=default))
    if not filled:
        return settings
    return create_model(settings.__name__, __base__=settings, __module__=settings.__module__, **filled)


def defaults_of(settings: type[BaseModel]) -> dict[str, Any]:
    """The settings' declared defaults, by their config names: what Hydra composes for keys a YAML file leaves out."""
    return {field.alias or name: field.get_default(call_default_factory=True) for name, field in settings.model_fields.items()
            if not field.is_required() and not (field.alias or name).startswith("_")}
