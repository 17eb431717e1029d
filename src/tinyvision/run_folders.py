"""The output folder a command owns: made or found empty, claimed with a locked claim file while the command runs,
never another run's or sweep's; a resume continues in its own folder; a requeued SLURM job's command finds its earlier
start; a refused command's folder is discarded (``exit_refused``): a refused command leaves nothing behind.
docs/faults-and-resume.md ("Run folders") says what each case leaves."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tinyvision import slurm
from tinyvision.console import report
from tinyvision.errors import ConfigError, TinyVisionError
from tinyvision.files import CLAIM_FILE, CONF_DIR

EXIT_BAD_INPUT = 2
_CLAIMED: list[tuple[Path, bool]] = []  # the output folder this process claimed, and whether it created it
_LOCKS: list[int] = []  # open claim files, each flock-ed while this process lives (the kernel lets go at its end)


def exit_refused(error: TinyVisionError) -> None:
    """The one line, the folder this command claimed discarded, exit status 2."""
    report(error)
    discard_claimed_output()
    sys.exit(EXIT_BAD_INPUT)


def claimed_folder() -> Path | None:
    """The output folder this process claimed, if any."""
    return next((folder for folder, _ in _CLAIMED), None)


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
            _refuse_used_folder(key, given, folder, multirun, config_name)
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


def _refuse_used_folder(key: str, given: str, folder: Path, multirun: bool, config_name: str) -> None:
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
    elif _abandoned(folder, held, config_name):
        return  # a command stopped before it wrote anything of its own: the same command line may start again here
    elif (folder / ".hydra").is_dir() or CLAIM_FILE in held:
        what, go_on = "another command's output", ""
    else:
        what, go_on = f"files ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''})", ""
    raise ConfigError(f"{key}={given} already holds {what}: it is kept as it is; choose a new folder{go_on}")


def _abandoned(folder: Path, held: list[str], config_name: str) -> bool:
    """Whether ``folder`` holds only what a command of this script writes before its own work (Hydra's .hydra/, its
    log, its claim, which no running command holds): one stopped at set-up, before its first checkpoint. Its stale
    claim is removed, under its lock and only if the claim file is still that one, so that of two commands taking the
    folder at once one wins (the other meets the winner's claim)."""
    import fcntl

    if not all(name in (".hydra", slurm.JOB_MARKER, CLAIM_FILE) or name.endswith(".log") for name in held):
        return False
    try:  # the same script's folder only: eval.py does not take over a train.py folder
        claim = json.loads((folder / CLAIM_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if not isinstance(claim, dict) or claim.get("command") != config_name:
        return False
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
    _CLAIMED.append((folder, False))  # the folder a stop's message names; holding a run, it is never discarded


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
