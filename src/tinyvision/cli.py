"""One answer to bad input for every script: ``error: KEY=VALUE: what is allowed, e.g. KEY=good``, exit 2.

Hydra composes the config before a script's main runs, and reports a misspelt key or an unknown option
through its own wrapper and exit status 1. ``precheck`` composes the command line first with Hydra's
compose API and words those failures as one line, with the closest valid key or the list of options.
What composes but cannot work is the settings' (``tinyvision.config``) and Lightning's to refuse, inside
main; ``report`` prints those. Real bugs keep their traceback: only ``TinyVisionError`` is worded here.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinyvision import slurm
from tinyvision.errors import ConfigError, TinyVisionError
from tinyvision.files import CLAIM_FILE

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
    message = "error: " + str(error).replace("\r", "\\r").replace("\n", "\\n")  # a value's line break stays in the line
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

    from tinyvision.files import LAST_CHECKPOINT

    name = signal.Signals(signum).name
    script = "find_lr" if config_name == "lr_find" else config_name
    from hydra.core.hydra_config import HydraConfig

    folder = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else \
        next((folder for folder, _ in _CLAIMED), None)
    if config_name == "train" and folder is not None and (folder / LAST_CHECKPOINT).is_file():
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
    if any(arg in _INFO_FLAGS or arg.startswith(("--cfg", "-c", "--package", "-p", "--config")) for arg in argv):
        return argv
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    overrides = [arg for arg in argv if not arg.startswith("-")]
    for override in overrides:
        error = _unreadable_value(override)
        if error is not None:
            exit_bad_input(error)
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


_CLAIMED: list[tuple[Path, bool]] = []  # the output folder this process claimed, and whether it created it
_LOCKS: list[int] = []  # open claim files, each flock-ed while this process lives (the kernel lets go at its end)


def holds_run(folder: Path) -> bool:
    """Whether a folder holds a training run's files (a refused run leaves none)."""
    return any((folder / name).exists() for name in ("metrics.json", "checkpoints", "pruned.json", "failure.json"))


def claim_output_dir(config_name: str, argv: list[str], overrides: list[str], multirun: bool) -> list[str]:
    """The command line with the output folder (a sweep's with -m) pinned to one this process owns: created with an
    exclusive mkdir, or found empty, then claimed with an O_EXCL claim file that it keeps locked while it runs; two
    commands started in the same second get two folders (the second named ..._2). A folder given with hydra.run.dir or
    hydra.sweep.dir that holds anything (another run's or sweep's record, another command's files) is refused before
    Hydra writes its .hydra/ and log into it; a resume continues in its own folder, once its checks have passed."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = next((arg.split("=", 1)[1] for arg in argv if arg.startswith(f"{key}=")), None)
    if given is not None and not given.strip("'\" "):
        raise ConfigError(f"{key}={given} names no folder (it would write into the current one): name a new folder, "
                          f"e.g. {key}=outputs/my_run")
    resumed = next((o.split("=", 1)[1] for o in overrides if o.split("=")[0] in ("resume", "hparams_search.resume")), None)
    if resumed is not None:
        if Path(resumed).is_dir() and not os.access(resumed, os.W_OK):
            raise ConfigError(f"resume={resumed}: the folder cannot be written here (read-only): copy it to a folder you "
                              "can write to and resume the copy (a copied run folder resumes in its new place)")
        if config_name == "train" and not multirun:
            _refuse_resume(overrides)  # before Hydra writes .hydra/resume_<time>/ and its log into the run's folder
        if Path(resumed).is_dir():
            _lock(Path(resumed), "resume" if not multirun else "hparams_search.resume", resumed)
        return argv
    if _rank_of_a_launched_run() or _joins_a_shared_study(multirun, overrides):
        # the ranks of one DDP run (torchrun, srun, Lightning's own launcher) and the workers of one shared study write
        # into one folder by design: only another run's record is refused
        if given is not None and "${" not in given and not multirun and config_name == "train" and holds_run(Path(given)) \
                and not os.environ.get("LOCAL_RANK", "0").strip("0"):
            raise ConfigError(f"hydra.run.dir={given} already holds a run: it is kept as it is; choose a new folder")
        return argv
    others = [arg for arg in argv if not arg.startswith(f"{key}=")]
    command = slurm.command_of(argv)
    earlier = _earlier_start(config_name, overrides, key, command) if config_name == "train" else None
    continued = _continued(earlier, others, key, multirun, overrides) if earlier is not None else None
    if continued is not None:  # a SLURM job's next start after it requeued itself: each command continues its own
        _lock(earlier, key, str(earlier))
        return continued
    if given is not None and "${" not in given:
        folder = Path(given)
        if config_name == "train" and not multirun and holds_run(folder):
            go_on = "" if (folder / "metrics.json").is_file() else f", or continue that run with python train.py resume={given}"
            raise ConfigError(f"hydra.run.dir={given} already holds a run: it is kept as it is; choose a new folder{go_on}")
        try:
            _make_folder(key, folder)  # missing parents stay, empty, if the command is refused
            created = True
        except FileExistsError:
            created = False
            _refuse_used_folder(key, given, folder, multirun)
        _claim(key, given, folder, config_name, created)
        slurm.mark(folder, command)
        return argv
    folder = Path(_resolved(config_name, overrides, key))
    _make_folder(key, folder.parent, parents=True)
    for attempt in range(1, 1000):
        candidate = folder if attempt == 1 else folder.with_name(f"{folder.name}_{attempt}")
        try:
            _make_folder(key, candidate)
        except FileExistsError:
            continue
        if not _claim(key, str(candidate), candidate, config_name, created=True, refuse=False):
            continue  # claimed by a command that named it with hydra.run.dir at the same moment
        slurm.mark(candidate, command)
        return [*others, f"{key}={candidate}"]
    raise ConfigError(f"{key}: {folder} and 998 more folders of that name exist already: name one with {key}=FOLDER")


def _refuse_used_folder(key: str, given: str, folder: Path, multirun: bool) -> None:
    """An existing folder is taken only when it is empty: whatever it holds is another command's."""
    if not folder.is_dir():
        raise ConfigError(f"{key}={given} is a file, not a folder: it is kept as it is; name a new folder, e.g. "
                          f"{key}={given}_out")
    try:
        held = sorted(p.name for p in folder.iterdir())
    except OSError as error:
        raise ConfigError(f"{key}={given}: cannot read the folder ({os.strerror(error.errno or 0)}): name a folder you "
                          f"can write to, e.g. {key}=outputs/my_run") from None
    if not held:
        return
    if multirun and any((p / ".hydra").is_dir() for p in folder.iterdir() if p.is_dir()) or "summary.md" in held:
        what = "an earlier sweep"
        go_on = f" (an Optuna search goes on with hparams_search.resume={given})" if "optuna.db" in held else ""
    elif CLAIM_FILE in held and _locked(folder / CLAIM_FILE):
        raise ConfigError(f"{key}={given} is in use by another command that is running now: it is left to it; choose "
                          "a new folder")
    elif holds_run(folder):
        what, go_on = "a run", ""
    elif _abandoned(folder, held):
        return  # a command stopped before it wrote anything of its own: the same command line may start again here
    elif (folder / ".hydra").is_dir() or CLAIM_FILE in held:
        what, go_on = "another command's output", ""
    else:
        what, go_on = f"files ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''})", ""
    raise ConfigError(f"{key}={given} already holds {what}: it is kept as it is; choose a new folder{go_on}")


def _abandoned(folder: Path, held: list[str]) -> bool:
    """Whether ``folder`` holds only what a command writes before its own work (Hydra's .hydra/, its log, a claim that
    no running command holds): one stopped at set-up, before its first checkpoint. Its stale claim is removed, under
    its lock and only if the claim file is still that one, so that of two commands taking the folder at once one
    wins (the other meets the winner's claim)."""
    import fcntl

    if not all(name in (".hydra", slurm.JOB_MARKER, CLAIM_FILE) or name.endswith(".log") for name in held):
        return False
    if CLAIM_FILE not in held:
        return True
    try:
        handle = os.open(folder / CLAIM_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(handle).st_ino != os.stat(folder / CLAIM_FILE).st_ino:
            return False  # another command took the folder a moment ago
        os.unlink(folder / CLAIM_FILE)
        return True
    except OSError:
        return False  # held by a running command
    finally:
        os.close(handle)


def _claim(key: str, given: str, folder: Path, config_name: str, created: bool, refuse: bool = True) -> bool:
    """Own ``folder``: its claim file made with O_EXCL (one of two commands that found it empty at once wins), naming
    the command, and locked while this process runs. Another's claim is refused, or with ``refuse=False`` False."""
    path = folder / CLAIM_FILE
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if not refuse:
            return False
        raise ConfigError(f"{key}={given} was taken by another command started at the same moment: it is left to it; "
                          "choose a new folder") from None
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ConfigError(f"{key}: cannot write into {folder}: {reason}: choose a folder you can write to, "
                          f"e.g. {key}=outputs/my_run") from None
    os.write(handle, (json.dumps({"command": config_name, "pid": os.getpid()}) + "\n").encode())
    _hold(handle)
    _CLAIMED.append((folder, created))
    return True


def _lock(folder: Path, key: str, given: str) -> None:
    """Refuse a folder that a running command holds (a run being resumed twice at once, a resume of a run that still
    trains); hold it for this process otherwise."""
    import fcntl

    try:
        handle = os.open(folder / CLAIM_FILE, os.O_CREAT | os.O_RDWR, 0o644)  # a folder older than claim files gets one
    except OSError:
        return  # a read-only folder is the resume check's to word
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(handle)
        raise ConfigError(f"{key}={given} is in use by a command that is still running: it is left to it; wait for "
                          "that command to end, or stop it first") from None
    _LOCKS.append(handle)


def _locked(path: Path) -> bool:
    """Whether a running command holds this claim file."""
    import fcntl

    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(handle)


def _hold(handle: int) -> None:
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks: the O_EXCL claim alone keeps the folder this command's
        pass
    _LOCKS.append(handle)


def _rank_of_a_launched_run() -> bool:
    """Whether this process is one of several ranks of one run started together (torchrun, srun of several tasks,
    Lightning's DDP launcher re-running the command): they share the run's folder."""
    env = os.environ
    if env.get("LOCAL_RANK", "0").strip() not in ("", "0") or env.get("RANK", "0").strip() not in ("", "0"):
        return True
    if env.get("WORLD_SIZE", "1").strip().isdigit() and int(env.get("WORLD_SIZE", "1")) > 1:
        return True
    return bool(env.get("SLURM_STEP_ID")) and env.get("SLURM_NTASKS", "1").strip().isdigit() and int(env["SLURM_NTASKS"]) > 1


def _joins_a_shared_study(multirun: bool, overrides: list[str]) -> bool:
    return multirun and any(o.lower() in ("hparams_search.shared=true", "hparams_search.shared=True") for o in overrides)


def _refuse_resume(overrides: list[str]) -> None:
    """A resume's own checks (the folder, its checkpoint, the settings the command gives) before Hydra writes anything
    into the run's folder: a refused resume leaves the folder as it was. Anything but tinyvision's own refusal is left
    to the run, which meets it in its place."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tinyvision.checkpoints import config_for_resume

    resumed = next(o.split("=", 1)[1] for o in overrides if o.split("=")[0] == "resume")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(Path(resumed).absolute())
            HydraConfig.instance().set_config(cfg)
            del cfg["hydra"]
        config_for_resume(cfg, overrides)
    except TinyVisionError:
        raise
    except Exception:  # noqa: BLE001  (the run meets it again, and says it where it happens)
        return
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None


def _make_folder(key: str, folder: Path, parents: bool = False) -> None:
    """Create ``folder`` (FileExistsError when it is there already), its missing parents too; with ``parents`` an
    existing folder is fine."""
    try:
        try:
            folder.mkdir(exist_ok=parents)
        except FileNotFoundError:
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.mkdir(exist_ok=parents)
    except FileExistsError:
        if parents:  # a file where the folder should be
            raise ConfigError(f"{key}: cannot create {folder}: a file is in the way: choose a folder you can write to, "
                              f"e.g. {key}=outputs/my_run") from None
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


def release_claims() -> None:
    """Let go of the folders an earlier command of this process claimed (a script run twice in one process)."""
    for handle in _LOCKS:
        try:
            os.close(handle)
        except OSError:
            pass
    _LOCKS.clear()
    _CLAIMED.clear()


def discard_claimed_output() -> None:
    """Empty the output folder this process claimed when the command was refused before writing anything of its own
    (only Hydra's .hydra/, its log and the claim): a refused command leaves nothing behind. A folder it created goes;
    one it found empty is left empty."""
    import shutil

    for folder, created in _CLAIMED:
        if not folder.is_dir() or holds_run(folder):
            continue
        held = list(folder.iterdir())
        if not all(p.name in (".hydra", slurm.JOB_MARKER, CLAIM_FILE) or p.suffix == ".log" for p in held):
            continue
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for path in held:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


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
        parent, leaf, rest, known = _first_missing_key(config_name, [o for o in overrides if o != line], key)
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
            return ".".join(parts[:depth]), part, rest, [str(k) for k in node.keys()]
        node = node[part]
    return key.rpartition(".")[0], parts[-1], "", []


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
