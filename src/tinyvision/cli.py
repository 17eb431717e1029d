"""One answer to bad input for every script: ``error: KEY=VALUE: what is allowed, e.g. KEY=good``, exit 2.

Hydra composes the config before a script's main runs, and reports a misspelt key or an unknown option
through its own wrapper and exit status 1. ``precheck`` composes the command line first with Hydra's
compose API and words those failures as one line, with the closest valid key or the list of options.
What composes but cannot work is the settings' (``tinyvision.config``) and Lightning's to refuse, inside
main; ``report`` prints those. Real bugs keep their traceback: only ``TinyVisionError`` is worded here.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinyvision import slurm
from tinyvision.errors import ConfigError, TinyVisionError

# The package's own config groups (conf/ at the checkout's root links here), so an installed tinyvision has them too.
CONF_DIR = Path(__file__).resolve().parent / "conf"
EXIT_BAD_INPUT = 2
# Command-line flags of Hydra's that take no part in composition (or print and exit by themselves).
# Names people type for a key that tinyvision or Lightning spells otherwise.
SYNONYMS = {"learning_rate": "lr", "epochs": "max_epochs", "batch": "batch_size", "bs": "batch_size",
            "wd": "weight_decay", "gpus": "devices", "precision_mode": "precision"}
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--version", "--shell-completion", "-sc"}


def log_to_file(message: str, level: int = logging.INFO) -> None:
    """Write a line to the run's log file only (when Hydra has set one up), not to the console again."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.LogRecord("tinyvision", level, __file__, 0, message, None, None))


def report(error: TinyVisionError) -> None:
    """Print the one line on stderr, once; the run's log file (when Hydra has set one up) keeps it too."""
    message = f"error: {error}"
    log_to_file(message, logging.ERROR)
    print(message, file=sys.stderr, flush=True)


def exit_bad_input(error: TinyVisionError) -> None:
    report(error)
    discard_claimed_output()
    sys.exit(EXIT_BAD_INPUT)


def run_script(config_name: str, job: Callable[[Any], Any]) -> None:
    """What each of the five scripts runs: its command line prechecked (``precheck``: one line and exit 2 when Hydra
    cannot compose it; the output folder claimed), then ``job`` under Hydra's main with conf/``config_name``.yaml.
    A TinyVisionError from ``job`` ends in its one line and exit status 2; what ``job`` returns goes to Hydra (a
    sweeper reads a multirun job's result)."""
    import functools

    import hydra

    sys.argv[1:] = precheck(config_name, sys.argv[1:])

    @functools.wraps(job)  # Hydra names the job (and its log file) after the script whose function this wraps
    def main(cfg):
        try:
            return job(cfg)
        except TinyVisionError as error:
            exit_bad_input(error)

    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(main)()
    exit_without_teardown()  # reached only when the script finished: an error or a signal exits the usual way


def exit_without_teardown() -> None:
    """End a script that has finished without the interpreter's teardown: with torch, torchvision and Lightning
    imported, freeing every module's objects one by one takes about a second here (BENCHMARKS.md), a tenth of a
    4-epoch LeNet run and most of a short command. The atexit handlers run first, as at a normal exit (logging's
    flush, multiprocessing's children, the libraries' own); then the standard streams are flushed and the process
    ends with status 0. Only for a process started to run this script (``python train.py ...``) whose other threads
    are all daemons: a script run inside another program (a test's runpy) returns, and so does one with a pool's
    threads still alive (the joblib launcher's), which the normal exit stops before it joins them."""
    import atexit
    import threading

    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    scripts = [arg for arg in sys.orig_argv[1:] if arg.endswith(".py")]
    if main_file is None or not scripts or Path(scripts[0]).resolve() != Path(main_file).resolve():
        return
    if any(thread is not threading.main_thread() and not thread.daemon for thread in threading.enumerate()):
        return  # a pool's threads (joblib's, concurrent.futures') stop through the normal exit's own hooks: leave it that
    atexit._run_exitfuncs()  # CPython's own call at exit (its only spelling); multiprocessing's children use it too
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    os._exit(0)


def precheck(config_name: str, argv: list[str]) -> list[str]:
    """Compose the command line as Hydra will; exit 2 with one line if it cannot be composed. Returns the command
    line with the output folder pinned to one this process has created (``claim_output_dir``)."""
    if any(arg in _INFO_FLAGS or arg.startswith(("--cfg", "-c", "--package", "-p", "--config")) for arg in argv):
        return argv
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    overrides = [arg for arg in argv if not arg.startswith("-")]
    try:
        command_lines = _each_sweep_value(overrides) if multirun else [overrides]
    except ConfigError as error:
        exit_bad_input(error)
    for command_line in command_lines:
        error = _composition_error(config_name, command_line)
        if error is not None:
            exit_bad_input(error)
    if multirun and config_name == "train":  # a sweep's bad value is refused before its good values train
        folds = next((o.split("=", 1)[1] for o in overrides if o.startswith("hparams_search.folds=")), None)
        if folds is not None and folds.isdigit():  # a study of folds sets data.fold itself: the command's is the mistake
            from tinyvision.search.space import refuse_picked_folds

            try:
                refuse_picked_folds(int(folds), overrides)
            except ConfigError as error:
                exit_bad_input(error)
        for command_line in command_lines:
            error = _settings_error(command_line)
            if error is not None:
                exit_bad_input(error)
    try:
        return claim_output_dir(config_name, argv, command_lines[0], multirun)
    except ConfigError as error:
        exit_bad_input(error)


_CLAIMED: list[Path] = []  # the output folder this process created, for discard_claimed_output


def holds_run(folder: Path) -> bool:
    """Whether a folder holds a training run's files (a refused run leaves none)."""
    return any((folder / name).exists() for name in ("metrics.json", "checkpoints", "pruned.json", "failure.json"))


def claim_output_dir(config_name: str, argv: list[str], overrides: list[str], multirun: bool) -> list[str]:
    """The command line with the output folder (a sweep's with -m) pinned to one this process has just created with
    an exclusive mkdir: two runs started in the same second get two folders (the second named ..._2). A folder given
    with hydra.run.dir that already holds a run is refused before Hydra writes its .hydra/ and log into it; a resume
    continues in its own folder."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = next((arg.split("=", 1)[1] for arg in argv if arg.startswith(f"{key}=")), None)
    resumed = next((o.split("=", 1)[1] for o in overrides if o.split("=")[0] in ("resume", "hparams_search.resume")), None)
    if resumed is not None:
        if Path(resumed).is_dir() and not os.access(resumed, os.W_OK):
            raise ConfigError(f"resume={resumed}: the folder cannot be written here (read-only): copy it to a folder you "
                              "can write to and resume the copy (a copied run folder resumes in its new place)")
        return argv
    others = [arg for arg in argv if not arg.startswith(f"{key}=")]
    command = slurm.command_of(argv)
    earlier = _earlier_start(config_name, overrides, key, command) if config_name == "train" else None
    continued = _continued(earlier, others, key, multirun, overrides) if earlier is not None else None
    if continued is not None:  # a SLURM job's next start after it requeued itself: each command continues its own
        return continued
    if given is not None and "${" not in given:
        if config_name == "train" and not multirun and holds_run(Path(given)):
            go_on = "" if (Path(given) / "metrics.json").is_file() else f", or continue that run with python train.py resume={given}"
            raise ConfigError(f"hydra.run.dir={given} already holds a run: it is kept as it is; choose a new folder{go_on}")
        if not Path(given).exists():  # made here, so that a refused command removes it again
            _make_folder(key, Path(given), parents=True)
            _CLAIMED.append(Path(given))
        slurm.mark(Path(given), command)
        return argv
    folder = Path(_resolved(config_name, overrides, key))
    _make_folder(key, folder.parent, parents=True)
    for attempt in range(1, 1000):
        candidate = folder if attempt == 1 else folder.with_name(f"{folder.name}_{attempt}")
        try:
            _make_folder(key, candidate)
        except FileExistsError:
            continue
        _CLAIMED.append(candidate)
        slurm.mark(candidate, command)
        return [*others, f"{key}={candidate}"]
    raise ConfigError(f"{key}: {folder} and 998 more folders of that name exist already: name one with {key}=FOLDER")


def _make_folder(key: str, folder: Path, parents: bool = False) -> None:
    try:
        folder.mkdir(parents=parents, exist_ok=parents)
    except FileExistsError:
        raise
    except OSError as error:  # a read-only disk, no permission, a file in the way
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ConfigError(f"{key}: cannot create {folder}: {reason}: choose a folder you can write to, "
                          f"e.g. {key}=outputs/my_run") from None


def _earlier_start(config_name: str, overrides: list[str], key: str, command: list[str]) -> Path | None:
    """In a requeued SLURM job, the folder its earlier start of this command left: the folder the command names, or
    (when it names a new one, as the default ``outputs/runs/<time>_...`` does) one beside it."""
    if slurm.job_id() is None or not slurm.restarted():
        return None
    folder = Path(_resolved(config_name, overrides, key))
    beside = sorted(folder.parent.iterdir(), reverse=True) if folder.parent.is_dir() else []
    return slurm.earlier_folder([folder, *beside], command)


def _continued(earlier: Path, others: list[str], key: str, multirun: bool, overrides: list[str]) -> list[str] | None:
    """The command line that continues a requeued job's earlier start in ``earlier``: a run resumes, a finished run
    is not trained again, a sweep goes on in its folder (its finished trials kept), an Optuna study is resumed;
    None for a run stopped before its first checkpoint, which starts anew."""
    if multirun:
        if any(o.lstrip("+").startswith("hparams_search=") for o in overrides):
            return [*others, f"hparams_search.resume={earlier}"]
        return [*others, f"{key}={earlier}"]
    if (earlier / "metrics.json").is_file():
        print(f"{earlier} finished in this SLURM job's earlier start: nothing left to do", flush=True)
        sys.exit(0)
    return [*others, f"resume={earlier}"] if slurm.resumable(earlier) else None


def discard_claimed_output() -> None:
    """Remove the output folder this process created when the run was refused before writing anything of its own
    (only Hydra's .hydra/ and log file): a refused command leaves nothing behind."""
    import shutil

    for folder in _CLAIMED:
        if folder.is_dir() and not holds_run(folder) and all(
                p.name in (".hydra", slurm.JOB_MARKER) or p.suffix == ".log" for p in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)


def _resolved(config_name: str, overrides: list[str], key: str) -> str:
    """A hydra.* value as Hydra will resolve it for this command line (its ${now:...} at this moment)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            return str(OmegaConf.select(cfg, key))
    finally:
        GlobalHydra.instance().clear()


def _each_sweep_value(overrides: list[str]) -> list[list[str]]:
    """A multirun's command line as single command lines that together hold every value of every choice
    sweep (ranges and intervals of a search are left out): if they compose, every job's keys and options exist."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    single, choices = [], []
    searching = any(line.lstrip("+").startswith("hparams_search=") for line in overrides)  # ranges are its search space
    for line in overrides:
        try:
            override = parser.parse_override(line)
        except HydraException as error:  # OverrideParseException, and what an empty choice() raises while parsed
            reason = first_line(str(error))
            raise ConfigError(f"{line}: cannot be read as KEY=VALUE ({reason}), e.g. optimizer.lr=0.01") from None
        key = override.get_key_element()
        if not override.is_sweep_override():
            single.append(line)
        elif isinstance(override.value(), IntervalSweep) and not searching:
            raise ConfigError(f"{line}: interval() is a range for an Optuna search (add hparams_search=optuna); a sweep "
                              f"of runs takes values, e.g. {key}=0.001,0.01 or '{key}=choice(0.001, 0.01)'")
        elif isinstance(override.value(), ChoiceSweep) and override.value().list:
            choices.append([f"{key}={_choice_text(v)}" for v in override.value().list])
        elif isinstance(override.value(), RangeSweep) and not searching:  # a grid's range(...): each of its values
            values = [f"{key}={value}" for value in override.sweep_string_iterator()]
            if not values:
                raise ConfigError(f"{line}: the range holds no value, so the sweep would run nothing; "
                                  f"e.g. '{key}=range(0, 3)'")
            choices.append(values)
    # Each value of each sweep once, the other sweeps at their first value: every option gets composed.
    firsts = [values[0] for values in choices]
    return [single + firsts] + [single + firsts[:i] + [value] + firsts[i + 1:]
                                for i, values in enumerate(choices) for value in values[1:]]


def _choice_text(value: Any) -> str:
    from hydra.core.override_parser.types import Override

    # Hydra's own writing of a parsed sweep value back as override text; it has no public name
    # (tests/test_bad_input.py composes sweeps of quoted and nested values through it).
    return Override._get_value_element_as_str(value)


def _composition_error(config_name: str, overrides: list[str]) -> ConfigError | None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            try:
                compose(config_name, overrides=overrides)
            except MissingConfigException as error:
                return _unknown_option(error, overrides)
            except HydraException as error:
                return _word_hydra_error(config_name, overrides, error)
    finally:
        GlobalHydra.instance().clear()
    return None


def _settings_error(overrides: list[str]) -> ConfigError | None:
    """The settings' refusal (``validate_train``, without the file system and the network) of one job of a sweep, or
    None. Only tinyvision's own refusals count: anything else is left to the job, which reports it in its place."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tinyvision.config import validate_train

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(Path.cwd() / "outputs" / "job")  # no job folder exists yet
            HydraConfig.instance().set_config(cfg)  # for ${hydra:...} in the job's keys
            del cfg["hydra"]
        validate_train(cfg, look_outside=False)
    except TinyVisionError as error:
        return error
    except Exception:  # noqa: BLE001  (the job itself meets it, and says it where its sweep reports failures)
        return None
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
    return None


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _unknown_option(error: Exception, overrides: list[str]) -> ConfigError:
    text = str(error)
    found = re.search(r"Could not (?:find|load) '([^']+)'", text)
    group, _, option = (found.group(1) if found else "").rpartition("/")
    options = re.findall(r"^\t(\S+)$", text, flags=re.MULTILINE)
    typed = next((o for o in overrides if o.lstrip("+~").split("=")[0] == group), f"{group}={option}")
    if not options:
        options = _options_of(group)
    close = difflib.get_close_matches(option, options, n=1)
    example = f"{group}={close[0] if close else (options[0] if options else 'NAME')}"
    return ConfigError(f"{typed}: no option {option!r} in {group}/; choose one of {', '.join(options)}, e.g. {example}")


def _options_of(group: str) -> list[str]:
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _word_hydra_error(config_name: str, overrides: list[str], error: Exception) -> ConfigError:
    text = f"{error}\n{error.__cause__ or ''}"
    found = re.search(r"Could not (?:override|append to|delete from config)[^']*'([^']+)'", text)
    key = found.group(1) if found else None
    if key and ("not in struct" in text or "does not exist" in text or "Could not find" in text or "delete" in text):
        line = next((o for o in overrides if o.lstrip("+~").split("=")[0] == key), key)
        parent, _, leaf = key.rpartition(".")
        known = _keys_at(config_name, [o for o in overrides if o != line], parent)
        close = [SYNONYMS[leaf]] if SYNONYMS.get(leaf) in known else difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
        where = f"{parent}." if parent else ""
        hint = f"did you mean {where}{close[0]}?" if close else \
            f"the keys of {parent or 'the config'} are {', '.join(known)}"
        return ConfigError(f"{line}: no key {leaf!r} in {parent or 'the config'}; {hint} "
                           f"(to add a key of your own, write +{key}=VALUE)")
    return ConfigError(f"{' '.join(overrides)}: {first_line(text)}")


def _keys_at(config_name: str, overrides: list[str], parent: str) -> list[str]:
    from hydra import compose
    from omegaconf import OmegaConf

    try:
        node = OmegaConf.select(compose(config_name, overrides=overrides), parent) if parent else \
            compose(config_name, overrides=overrides)
    except Exception:  # another override is wrong too: list nothing rather than fail here
        return []
    return [str(k) for k in node.keys()] if hasattr(node, "keys") else []


def trainer_error(trainer_cfg: dict[str, Any], error: Exception) -> ConfigError:
    """Lightning's refusal of a Trainer argument, worded as ``trainer.KEY=VALUE: Lightning's reason``."""
    import inspect

    import lightning as L

    from tinyvision.schema import show

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
