"""Every shell command the documentation shows is run, so README.md and docs/*.md stay true.

What counts as a command: in README.md and docs/*.md, each line of a ```bash block that starts with `python `, `make `
or `tensorboard` (a line ending in `\\` is joined with the next), and each `$ python ...` line of any other code block
(a console example: the lines after it, up to the next `$` line, are its output).

Marks, one convention: an HTML comment on the line right before a code block marks every command of that block.

    <!-- needs: gpu -->        without a CUDA device the command must refuse in one line: exit status 2, a single
                               `error:` line on stderr, no traceback; with one it runs like an unmarked command
    <!-- needs: internet -->   skipped, with that reason: the tests run offline (pretrained weights)
    <!-- needs: cluster -->    skipped, with that reason: there is no SLURM here
    <!-- not run by tests/test_docs.py: REASON -->    skipped with REASON (takes minutes, starts a server, ...)

Every unmarked command runs in a subprocess from the repository root (sys.executable for `python`), with tiny limits
(TINY) on the synthetic data of tests/conftest.py; placeholders such as `outputs/runs/<run>` or `my_photos/` are filled
from runs made once in this module's fixtures, and paths under outputs/ are moved into a temporary folder. A command
must exit 0, unless its console example shows an `error:` line: then exit status 2 and that line (`...` in it stands for
any text). A command that is neither run nor marked (a `make` target, another script) fails its test, and
test_every_command_is_run_or_marked counts them all. The same command shown in several places runs once.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, draw_shape

pytestmark = pytest.mark.slow  # runs every documented command in a subprocess: make test-fast leaves these out

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = ("train.py", "eval.py", "predict.py", "export.py", "find_lr.py")
TIMEOUT = 300  # seconds per command
NEEDS = {"gpu": "needs a GPU", "internet": "needs the internet (the tests run offline)", "cluster": "needs a SLURM cluster"}
MARK = re.compile(r"<!--\s*(?:needs:\s*(?P<needs>\S+)|not run by tests/test_docs\.py:\s*(?P<reason>.+?))\s*-->")

# Every run is this small (the fixture data has 400 training images); each key replaces the command's own value.
TINY_TRAIN = {"trainer.max_epochs": "1", "trainer.limit_train_batches": "2", "trainer.limit_val_batches": "1",
              "trainer.limit_test_batches": "1", "callbacks": "minimal", "data.val_size": "0.1"}
TINY_SEARCH = {"hparams_search.n_trials": "1"}
# The learning-rate finder needs its steps (lr_find.num_training, 20 at least) and several epochs to take them.
TINY_LR_FIND = {"lr_find.num_training": "20", "trainer.limit_val_batches": "1", "callbacks": "minimal", "data.val_size": "0.1"}
# Placeholders of the docs and the fixture that fills each (a path inside it, or None for the fixture's own path).
PLACEHOLDERS = {
    "outputs/runs/<run>/checkpoints/best.ckpt": ("finished_run", "checkpoints/best.ckpt"),
    "outputs/runs/<run>": ("finished_run", None),
    "outputs/export/<date_time>/model.onnx": ("exported", "model.onnx"),
    "my_photos/": ("photos", "my_photos"),
    "photo.jpg": ("photos", "photo.jpg"),
    "data/my_images": ("data_root", "ants_bees"),  # two classes of PNG images of mixed sizes
}


@dataclass(frozen=True)
class Command:
    text: str  # as shown, continuation lines joined
    places: tuple[str, ...]  # file:line of each place that shows it
    mark: str | None = None  # gpu, internet, cluster, skip, or a malformed mark's text
    reason: str = ""
    expected_error: str | None = None  # a console example's error line

    @property
    def tokens(self) -> list[str]:
        return shlex.split(self.text, comments=True)


def code_blocks(path: Path):
    """(language, first body line number, body lines, the mark comment before the fence or None) of each block."""
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = re.fullmatch(r"\s*```(\w*)\s*", lines[index])
        if fence is None:
            index += 1
            continue
        end = next((j for j in range(index + 1, len(lines)) if lines[j].strip().startswith("```")), len(lines))
        before = lines[index - 1].strip() if index else ""
        yield fence.group(1), index + 2, lines[index + 1:end], before if before.startswith("<!--") else None
        index = end + 1


def shown_commands(path: Path) -> list[Command]:
    name = path.relative_to(ROOT).as_posix()
    found = []
    for language, first, body, comment in code_blocks(path):
        mark, reason = None, ""
        if comment is not None:
            matched = MARK.fullmatch(comment)
            if matched is None or (matched["needs"] and matched["needs"] not in NEEDS):
                mark, reason = "malformed", comment
            elif matched["needs"]:
                mark, reason = matched["needs"], NEEDS[matched["needs"]]
            else:
                mark, reason = "skip", matched["reason"]
        if language == "bash":
            number = 0
            while number < len(body):
                start, line = number, body[number]
                while line.rstrip().endswith("\\") and number + 1 < len(body):
                    number += 1
                    line = line.rstrip()[:-1] + " " + body[number].strip()
                number += 1
                if line.startswith(("python ", "make ", "tensorboard")):
                    found.append(Command(line.strip(), (f"{name}:{first + start}",), mark, reason))
        else:
            for number, line in enumerate(body):
                if line.startswith("$ python "):
                    output = []
                    for after in body[number + 1:]:
                        if after.startswith("$ "):
                            break
                        output.append(after)
                    error = next((o for o in output if o.startswith("error:")), None)
                    found.append(Command(line[2:].strip(), (f"{name}:{first + number}",), mark, reason, error))
    return found


def all_commands() -> list[Command]:
    """Each distinct command once (the same words, mark and expected error), with every place that shows it."""
    unique: dict[tuple, Command] = {}
    for path in DOCS:
        for command in shown_commands(path):
            key = (tuple(command.tokens), command.mark, command.expected_error)
            seen = unique.get(key)
            unique[key] = command if seen is None else Command(seen.text, seen.places + command.places, seen.mark,
                                                               seen.reason, seen.expected_error)
    return list(unique.values())


COMMANDS = all_commands()


def kind(command: Command) -> str:
    """run, checked (a GPU command refused here), skipped, or unhandled (neither run nor marked)."""
    if command.mark in ("internet", "cluster", "skip"):
        return "skipped"
    if command.mark == "malformed":
        return "unhandled"
    tokens = command.tokens
    if tokens[0] != "python" or len(tokens) < 2 or tokens[1] not in SCRIPTS:
        return "unhandled"
    return "checked" if command.mark == "gpu" and not _gpu() else "run"


@functools.cache
def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------ fixtures


@dataclass
class Ran:
    argv: list[str]
    result: subprocess.CompletedProcess
    folder: Path | None  # the output folder given to the command (hydra.run.dir or hydra.sweep.dir)
    replaced: dict[str, str]  # placeholder value shown -> value run

    def report(self, command: str, where: str) -> str:
        return (f"{where}: `{command}`\n  ran: {shlex.join(self.argv)}\n  exit status {self.result.returncode}\n"
                f"  stderr (last lines):\n{self.result.stderr[-3000:]}")


# Documented commands whose run a fixture makes once, for the placeholders of other commands: their own test reads it.
SHARED = {
    ("python", "train.py", "model=lenet", "data=fashion"): "finished_run",  # outputs/runs/<run>
    ("python", "train.py", "-m", "hparams_search=lenet_fashion"): "study",  # outputs/multirun/<date_time>
    ("python", "export.py", "ckpt_path=outputs/runs/<run>/checkpoints/best.ckpt"): "exported",  # .../model.onnx
}


def run(argv: list[str]) -> subprocess.CompletedProcess:
    # One math thread per process: on a shared 2-core machine a tiny run's start-up is most of its time, and torch's
    # thread pool competing for the cores made each command about a fifth slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def tiny_args(settings: dict[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in settings.items()]


def execute(tokens: list[str], request) -> Ran:
    """Run a documented command: placeholders filled, tiny limits, the fixture data, an output folder of its own."""
    _, script, *args = tokens
    data_root, workspace = request.getfixturevalue("data_root"), request.getfixturevalue("workspace")
    filler = Filler(request, workspace)
    args, folder = tiny_command(script, filler.args(args), data_root, workspace)
    argv = [sys.executable, script, *args]
    return Ran(argv, run(argv), folder, filler.replaced)


def shared_run(tokens: tuple[str, ...], request) -> Ran:
    ran = execute(list(tokens), request)
    assert ran.result.returncode == 0, ran.report(" ".join(tokens), "a run other commands' placeholders need")
    return ran


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    (folder / "outputs").mkdir()  # as the repository's own outputs/ exists
    return folder


@pytest.fixture(scope="module")
def finished_run(request) -> Ran:
    return shared_run(("python", "train.py", "model=lenet", "data=fashion"), request)


@pytest.fixture(scope="module")
def study(request) -> Ran:
    ran = shared_run(("python", "train.py", "-m", "hparams_search=lenet_fashion"), request)
    assert (ran.folder / "optuna.db").is_file()
    return ran


@pytest.fixture(scope="module")
def exported(request) -> Ran:
    ran = shared_run(("python", "export.py", "ckpt_path=outputs/runs/<run>/checkpoints/best.ckpt"), request)
    assert (ran.folder / "model.onnx").is_file() and (ran.folder / "model.onnx.json").is_file()
    return ran


@pytest.fixture(scope="module")
def stopped_run(data_root, workspace) -> Path:
    """A run stopped by SIGTERM during its 2nd of 4 training steps, as a scheduler stops one."""
    run_dir = workspace / "stopped"
    result = run([sys.executable, "tests/faults.py", "term-at-step", "2", "train.py", "model=lenet", "data=fashion",
                  *tiny_args({**TINY_TRAIN, "trainer.limit_train_batches": "4"}), f"paths.data_dir={data_root}",
                  f"hydra.run.dir={run_dir}"])
    assert result.returncode == 143, result.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "metrics.json").exists()
    return run_dir


@pytest.fixture(scope="module")
def photos(workspace) -> Path:
    folder = workspace / "photos"
    (folder / "my_photos").mkdir(parents=True)
    for label in (1, 5):
        draw_shape(label, (220, 160), (30, 20, 130, 130), ink=40, background=225, width=9).save(folder / "my_photos" / f"{label}.png")
    draw_shape(8, (200, 260), (40, 40, 160, 220), ink=30, background=230, width=8).convert("RGB").save(folder / "photo.jpg")
    return folder


def copied(source: Path, workspace: Path, name: str) -> Path:
    """A fresh copy of a run or sweep folder (a resumed copy must not spoil the next command's): a copied folder
    resumes in its new place."""
    for number in range(1, 1000):
        target = workspace / f"{name}_{number}"
        if not target.exists():
            shutil.copytree(source, target)
            return target
    raise AssertionError(f"no free name for a copy of {source}")


class Filler:
    """Fills a command's placeholders from the fixtures, and moves outputs/ into the workspace."""

    def __init__(self, request, workspace: Path):
        self.request, self.workspace = request, workspace
        self.replaced: dict[str, str] = {}  # shown value -> value run, for the expected error line

    def fixture_path(self, name: str) -> Path:
        value = self.request.getfixturevalue(name)
        return value.folder if isinstance(value, Ran) else Path(value)

    def value(self, key: str, value: str) -> str:
        if key == "resume" and value.startswith("outputs/runs/<run>"):
            return str(copied(self.request.getfixturevalue("stopped_run"), self.workspace, "resumed"))
        if key == "hparams_search.resume" and value.startswith("outputs/multirun/<date_time>"):
            return str(copied(self.fixture_path("study"), self.workspace, "study_resumed"))
        for shown, (fixture, inside) in PLACEHOLDERS.items():
            if value == shown or value.rstrip("/") == shown.rstrip("/"):
                path = self.fixture_path(fixture)
                return str(path / inside if inside else path)
        assert "<" not in value, f"{key}={value}: a placeholder tests/test_docs.py cannot fill (add it to PLACEHOLDERS)"
        if value.startswith("outputs/") or value.startswith("sqlite:///outputs/"):
            return value.replace("outputs/", f"{self.workspace}/outputs/", 1)
        if key == "output" and not Path(value).is_absolute():
            return str(self.workspace / "outputs" / value)
        return value

    def args(self, args: list[str]) -> list[str]:
        filled = []
        for arg in args:
            key, equals, value = arg.partition("=")
            if not equals or arg.startswith("-"):
                filled.append(arg)
                continue
            new = self.value(key.lstrip("+~"), value)
            if new != value:
                self.replaced[value] = new
            filled.append(f"{key}={new}")
        return filled


def with_settings(args: list[str], settings: dict[str, str]) -> list[str]:
    """args with each key of settings set to its value (the command's own value of that key dropped)."""
    kept = [a for a in args if a.lstrip("+~").partition("=")[0] not in settings]
    return kept + tiny_args(settings)


FOLDERS = itertools.count(1)  # each command's own output folder in the workspace


def tiny_command(script: str, args: list[str], data_root: Path, workspace: Path) -> tuple[list[str], Path | None]:
    """The command's arguments with the tiny limits, the fixture data and an output folder in the workspace (unless
    the command names one or continues one), and that folder."""
    keys = {a.partition("=")[0] for a in args}
    multirun = bool({"-m", "--multirun"} & set(args))
    folder_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = workspace / "outputs" / f"command_{next(FOLDERS)}"
    new_folder = [f"{folder_key}={folder}"]
    if folder_key in keys:
        new_folder, folder = [], Path(next(a for a in args if a.startswith(f"{folder_key}=")).partition("=")[2])
    if script == "train.py":
        if "resume" in keys:
            return args, None  # a resumed run takes its own settings, in its own folder
        settings = {**TINY_TRAIN, **(TINY_SEARCH if "hparams_search" in keys else {}), "paths.data_dir": str(data_root)}
        if "hparams_search.resume" in keys:
            return with_settings(args, settings), None  # the study's folder, and the settings the study began with
        return with_settings(args, settings) + new_folder, folder
    if script == "find_lr.py":
        return with_settings(args, {**TINY_LR_FIND, "paths.data_dir": str(data_root)}) + new_folder, folder
    if script == "eval.py":
        settings = {"paths.data_dir": str(data_root), **({"data.val_size": "0.1"} if "data" in keys else {})}
        return with_settings(args, settings) + new_folder, folder
    return args + new_folder, folder  # predict.py, export.py: their inputs are the fixtures' files


def matches(expected: str, line: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, line) is not None


# --------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("command", COMMANDS, ids=[c.places[0] for c in COMMANDS])
def test_documented_command(command, request):
    where = ", ".join(command.places)
    what = kind(command)
    if what == "skipped":
        pytest.skip(f"{command.reason}: {command.text}")
    if what == "unhandled":
        pytest.fail(f"{where}: `{command.text}` is neither run nor marked: tests/test_docs.py runs `python` with "
                    f"{', '.join(SCRIPTS)}; mark anything else as its docstring says"
                    + (f" (malformed mark: {command.reason})" if command.mark == "malformed" else ""))
    shared = SHARED.get(tuple(command.tokens))
    ran = request.getfixturevalue(shared) if shared and what == "run" else execute(command.tokens, request)
    result, shown = ran.result, ran.report(command.text, where)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    if what == "checked" or command.expected_error is not None:
        assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, \
            f"expected one `error:` line and exit status 2: {shown}"
        if command.expected_error is not None:
            expected = command.expected_error
            for before, after in ran.replaced.items():
                expected = expected.replace(before, after)
            assert matches(expected, errors[0]), f"{where}: `{command.text}`\n  shown: {expected}\n  got:   {errors[0]}"
        return
    assert result.returncode == 0, shown


def test_every_command_is_run_or_marked():
    """Each command is run, marked and checked, or marked and skipped; none is left out unnoticed."""
    counts = {"run": [], "checked": [], "skipped": [], "unhandled": []}
    for command in COMMANDS:
        counts[kind(command)].append(command)
    places = sum(len(c.places) for c in COMMANDS)
    print(f"\ndocumented commands: {len(COMMANDS)} distinct ({places} places): {len(counts['run'])} run, "
          f"{len(counts['checked'])} marked and checked, {len(counts['skipped'])} marked and skipped")
    for command in counts["skipped"]:
        print(f"  skipped {command.places[0]}: {command.reason}: {command.text}")
    assert len(COMMANDS) >= 20, "the docs' commands were not found: has the code-block format changed?"
    assert not counts["unhandled"], [f"{c.places[0]}: {c.text}" for c in counts["unhandled"]]


def test_layout_lists_every_module_and_command():
    layout = (ROOT / "docs" / "layout.md").read_text()
    package = ROOT / "src" / "tinyvision"
    files = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    missing = [name for name in [*files, *SCRIPTS] if f"`{name}`" not in layout]
    assert not missing, f"docs/layout.md does not list {missing}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_links_between_the_pages_resolve():
    broken = []
    for path in DOCS:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                broken.append(f"{path.name}: {target}")
            elif anchor and linked.suffix == ".md":
                headings = {slug(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)}
                if anchor not in headings:
                    broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, broken


def test_docs_speak_of_tutorials_and_the_readers_machine():
    """The tutorials are "tutorial 1" to "tutorial 5" (seed is only the config key); no path of the writer's machine."""
    found = []
    for path in DOCS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bseeds? ?0\d\d|§|/work/|this machine|no GPU was lent|tinyvision\[", line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, found
