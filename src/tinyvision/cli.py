"""The scripts' entry: one answer to bad input for every script, ``error: KEY=VALUE: what is allowed, e.g. KEY=good``,
exit 2; signals end a command with 128 + their number.

Hydra composes the config before a script's main runs, and reports a misspelt key or an unknown option
through its own wrapper and exit status 1. ``precheck`` composes the command line first with Hydra's
compose API and words those failures as one line, with the closest valid key or the list of options, then claims
the output folder (tinyvision.run_folders). What composes but cannot work is the settings' (``tinyvision.config``)
and Lightning's to refuse, inside main; tinyvision.console prints those. Real bugs keep their traceback: only
``TinyVisionError`` is worded. Nothing below this module imports it: the training code and the search use
tinyvision.console and tinyvision.run_folders.
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

from tinyvision.console import log_to_file
from tinyvision.errors import ConfigError, TinyVisionError, first_line
from tinyvision.files import CONF_DIR
from tinyvision.run_folders import claim_output_dir, claimed_folder, exit_refused, release_claims

# Names people type for a key that tinyvision or Lightning spells otherwise.
SYNONYMS = {"learning_rate": "lr", "epochs": "max_epochs", "batch": "batch_size", "bs": "batch_size",
            "wd": "weight_decay", "gpus": "devices", "precision_mode": "precision"}
# Command-line flags of Hydra's that take no part in composition (or print and exit by themselves).
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--version", "--shell-completion", "-sc"}


exit_bad_input = exit_refused  # the one line, the claimed folder discarded, exit 2


def run_script(config_name: str, job: Callable[[Any], Any]) -> None:
    """What each of the five scripts runs: its command line prechecked (``precheck``: one line and exit 2 when Hydra
    cannot compose it; the output folder claimed), then ``job`` under Hydra's main with conf/``config_name``.yaml.
    A TinyVisionError from ``job`` ends in its one line and exit status 2; what ``job`` returns goes to Hydra (a
    sweeper reads a multirun job's result). The console may go away (``keep_console_optional``), and a stop signal
    ends the command with 128 + its number (``note_stop_signals``), wherever it lands."""
    import functools

    import hydra

    keep_console_optional()
    previous = note_stop_signals()
    release_claims()  # a script run again in this process (a test's runpy) claims anew
    try:
        sys.argv[1:] = precheck(config_name, sys.argv[1:])

        @functools.wraps(job)  # Hydra names the job (and its log file) after the script whose function this wraps
        def main(cfg):
            try:
                return job(cfg)
            except TinyVisionError as error:
                exit_bad_input(error)

        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(main)()
    except BaseException as error:
        signum = _stopped_by(error)
        if signum is None:
            raise
        if isinstance(error, SystemExit) and error.code == 128 + signum:
            raise  # the command said where it stopped (train.py: the checkpoint and the resume command)
        _say_stopped(config_name, signum)
        sys.exit(128 + signum)
    finally:
        _restore(previous)  # a script run inside another program (a test's runpy) leaves its handlers as they were
    exit_without_teardown()  # reached only when the script finished: an error or a signal exits the usual way


# ---------------------------------------------------------------------------------------------- signals, console
_MAIN_PID: list[int] = []  # the process that noted the signals (forked data-loader workers keep the default action)
_SIGNALLED: list[int] = []  # SIGTERM or SIGINT received by this command


class CommandStopped(BaseException):
    """SIGTERM outside a Lightning loop (which stops at the step's end by itself): the command stops where it is."""


def note_stop_signals() -> dict[int, Any]:
    """SIGTERM and SIGINT are noted for the exit status (143, 130: as a shell reports a process the signal ended), and
    the command stops: inside Lightning's loops at the end of the step under way (Lightning's SIGTERM handler runs
    first and calls this one after it; train.py's StopOnSignal takes SIGINT during fit and test), elsewhere at once.
    Lightning turns both into exits of its own (SIGTERM: SystemExit 0; Ctrl+C: 1), which would tell a scheduler that
    the work was done or had failed; ``run_script`` ends such a command with the signal's status instead."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    _MAIN_PID[:] = [os.getpid()]
    _SIGNALLED.clear()
    return {signum: signal.signal(signum, _on_stop_signal) for signum in (signal.SIGTERM, signal.SIGINT)}


def _restore(previous: dict[int, Any]) -> None:
    import signal

    for signum, handler in previous.items():
        if handler is not None:
            signal.signal(signum, handler)


def _on_stop_signal(signum, frame) -> None:
    import signal

    if os.getpid() not in _MAIN_PID:  # a forked worker: the signal's default action, as before
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _SIGNALLED.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt  # Python's own action; Lightning and StopOnSignal answer it
    if type(signal.getsignal(signal.SIGTERM)).__name__ == "_HandlersCompose":
        return  # Lightning's handler ran before this one: its loop stops after the step under way
    raise CommandStopped(signal.Signals(signum).name)


def _stopped_by(error: BaseException) -> int | None:
    """The stop signal behind an exception that ends a command, or None."""
    import signal

    if _SIGNALLED:
        return _SIGNALLED[-1]
    lightning = sys.modules.get("lightning.pytorch.utilities.exceptions")
    if lightning is not None and isinstance(error, lightning.SIGTERMException):
        return signal.SIGTERM
    return None


def _say_stopped(config_name: str, signum: int) -> None:
    """The line a stopped command leaves (log file and console): what it did not finish, and that nothing was
    promised: train.py names the checkpoint only when one was written."""
    import signal

    from tinyvision.files import LAST_CHECKPOINT, METRICS_FILE

    name = signal.Signals(signum).name
    script = "find_lr" if config_name == "lr_find" else config_name
    from hydra.core.hydra_config import HydraConfig

    folder = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else \
        claimed_folder()
    if config_name == "train" and folder is not None and (folder / METRICS_FILE).is_file():  # a continuation's set-up
        message = (f"stopped by {name} before the continuation began; {folder} is the finished run it was: continue "
                   f"it with  python train.py resume={folder} trainer.max_epochs=N")
    elif config_name == "train" and folder is not None and (folder / LAST_CHECKPOINT).is_file():
        message = (f"stopped by {name}; {folder / LAST_CHECKPOINT} holds the last checkpoint written: resume with  "
                   f"python train.py resume={folder}")
    elif config_name == "train":
        message = f"stopped by {name} before the run's first checkpoint: no checkpoint was written, start the run anew"
    else:
        message = f"stopped by {name} before {script}.py finished: its results were not all written; run it again"
    log_to_file(message, logging.WARNING)
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class _DroppableStream:
    """sys.stdout or sys.stderr whose reader may go away (``| head``, a closed terminal): the first failed write points
    the file descriptor at /dev/null, and the command goes on without its console; what it writes to files is its
    result, and its exit status is its own. Rich's own answer to a broken pipe is SystemExit(1), and print's an
    exception that ends the run."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            self._drop()
            return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._drop()

    def _drop(self) -> None:
        import contextlib

        with contextlib.suppress(OSError, ValueError, AttributeError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())  # what is still buffered, and any later write, goes nowhere
            os.close(null)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def keep_console_optional() -> None:
    """Standard streams that are closed at the start (``2>&-``) or whose reader leaves later drop their output."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:  # closed: /dev/null in its place, so that no file opened later takes its number
            null = os.open(os.devnull, os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        stream = getattr(sys, name)
        if stream is None:  # Python started without it
            stream = open(os.devnull, "w")  # noqa: SIM115  (the process's stream, open until its end)
        if not isinstance(stream, _DroppableStream):
            setattr(sys, name, _DroppableStream(stream))


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
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    overrides = [arg for arg in argv if not arg.startswith("-")]
    if any(arg in _INFO_FLAGS or arg.startswith(("--cfg", "-c", "--package", "-p", "--config")) for arg in argv):
        # nothing runs and nothing is written; an override Hydra cannot compose would still be its traceback
        only_help = all(arg in ("--help", "-h") or not arg.startswith("-") for arg in argv)  # no flag takes a value
        error = _composition_error(config_name, overrides) if only_help else None
        if error is not None:
            exit_bad_input(error)
        return argv
    for override in overrides:
        error = _unreadable_value(override)
        if error is not None:
            exit_bad_input(error)
    try:
        command_lines = _each_sweep_value(overrides) if multirun else [overrides]
    except ConfigError as error:
        exit_bad_input(error)
    for command_line in command_lines:
        error = _composition_error(config_name, command_line) or _added_top_level_key(config_name, command_line)
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


def _unreadable_value(override: str) -> ConfigError | None:
    """What Hydra's parser cannot read and answers with a traceback or a message of several lines: a line break inside
    a value, or a number of more digits than Python converts (4300)."""
    key, _, value = override.partition("=")
    if "\n" in value or "\r" in value:
        shown = value.replace("\r", "\\r").replace("\n", "\\n")
        return ConfigError(f"{key}={shown}: a value has no line break: give it on one line")
    from tinyvision.files import too_long

    digits = max((len(run) for run in re.findall(r"\d+", value)), default=0)
    if digits > sys.get_int_max_str_digits() > 0:
        return ConfigError(f"{key}={value[:12]}... ({digits} digits): a number that long is a typo (Python reads at most "
                           f"{sys.get_int_max_str_digits()} digits): give it with fewer, e.g. {key}=42")
    reason = too_long(value) if "/" in value or len(value) > 255 else None
    if reason is not None:  # the library's "File name too long" would come as a traceback, some of it after work
        return ConfigError(f"{key}={value[:40]}... : {reason}: shorten it")
    return None


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


# Top-level keys a script takes although its config does not hold them: the settings word their own answer
# (train.py's ckpt_path: continue a run with resume=).
_ANSWERED_BY_THE_SETTINGS = {"train": ("ckpt_path",)}
_CLOSED_TOP_LEVEL = ("train", "eval", "predict", "export", "lr_find")  # their settings refuse a key they do not know


def _added_top_level_key(config_name: str, overrides: list[str]) -> ConfigError | None:
    """A key added at the top with + or ++ that the script's config does not hold (+bacth_size=5): Hydra adds it, and
    the script's settings refuse it only once torch and Lightning have loaded (about 5 s); the same line, now."""
    added = [o for o in overrides if o.startswith("+") and "=" in o and "." not in o.lstrip("+").split("=", 1)[0]]
    added = [o for o in added if o.lstrip("+").split("=", 1)[0] not in _ANSWERED_BY_THE_SETTINGS.get(config_name, ())]
    if config_name not in _CLOSED_TOP_LEVEL or not added:
        return None
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            known = compose(config_name, overrides=[o for o in overrides if o not in added])
    finally:
        GlobalHydra.instance().clear()
    for override in added:
        key, value = override.lstrip("+").split("=", 1)
        if key in known or (CONF_DIR / key).is_dir():  # a group's option (+debug=fdr) is Hydra's to compose
            continue
        close = difflib.get_close_matches(key, list(known), n=1)
        if not close:  # a key of a section given at the top (+bacth_size for data.batch_size)
            inner = {f"{section}.{name}": name for section in known if hasattr(known[section], "keys")
                     for name in known[section].keys()}
            match = difflib.get_close_matches(key, list(inner.values()), n=1)
            close = [next(full for full, name in inner.items() if name == match[0])] if match else []
        hint = f"did you mean {close[0]}?" if close else f"the keys here are {', '.join(known)}"
        return ConfigError(f"{key}={value}: no such key; {hint}")
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
    line = next((o for o in overrides if o.lstrip("+~").split("=")[0] == key), key) if key else None
    if key and "An item is already at" in text:  # +key=value for a key the config has
        return ConfigError(f"{line}: {key} is in the config already: set it without the +, e.g. {line.lstrip('+')}")
    dropped = re.search(r"Could not delete '([^']+)'\. No match in the defaults list", text)
    if dropped:  # ~group for a group this script's config does not have
        line = next((o for o in overrides if o.lstrip("~").split("=")[0] == dropped.group(1)), f"~{dropped.group(1)}")
        script = "find_lr" if config_name == "lr_find" else config_name
        return ConfigError(f"{line}: {script}.py has no {dropped.group(1)} to remove: leave it out")
    if key and ("not in struct" in text or "does not exist" in text or "Could not find" in text or "delete" in text):
        parent, leaf, rest, known = _first_missing_key(config_name, [o for o in overrides if o != line], key)
        if known is not None and leaf in known and not rest:  # ~model.freeze: the key is there, Hydra cannot drop it
            return ConfigError(f"{line}: {key} cannot be removed (every key of {parent} is used): set it to the value "
                               f"you want instead, e.g. {key}=VALUE")
        if known is None:  # the key goes below a value: optimizer.lr.x
            return ConfigError(f"{line}: {parent} is a value, not a section with keys: set it, e.g. {parent}=VALUE")
        close = [SYNONYMS[leaf]] if SYNONYMS.get(leaf) in known else difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
        where = f"{parent}." if parent else ""
        hint = f"did you mean {where}{close[0]}{rest}?" if close else \
            f"the keys of {parent or 'the config'} are {', '.join(known) or '(none)'}"
        # No "+key" advice: every section's keys are checked by its settings, so a key of one's own is refused there
        return ConfigError(f"{line}: no key {leaf!r} in {parent or 'the config'}; {hint}")
    return ConfigError(f"{' '.join(overrides)}: {first_line(text)}")


def _first_missing_key(config_name: str, overrides: list[str], key: str) -> tuple[str, str, str, list[str] | None]:
    """Where a dotted key leaves the composed config: the deepest section that exists, the first missing name, the
    rest of the key after it and the section's keys (``optimzer.lr``: the config, ``optimzer``, ``.lr``, its
    sections); the keys are None when that "section" is a value."""
    from hydra import compose
    from omegaconf import DictConfig

    try:
        node = compose(config_name, overrides=overrides)
    except Exception:  # another override is wrong too: list nothing rather than fail here
        node = None
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return ".".join(parts[:depth]), part, "." + ".".join(parts[depth + 1:]) if depth + 1 < len(parts) else "", \
                None if node is not None else []
        if part not in node:
            rest = "".join(f".{later}" for later in parts[depth + 1:])
            return ".".join(parts[:depth]), part, rest, [str(k) for k in node.keys() if not str(k).startswith("_")]
        node = node[part]
    return key.rpartition(".")[0], parts[-1], "", [parts[-1]]  # the whole key exists: its name is among its section's


