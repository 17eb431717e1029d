"""Where a user's file, folder, address or device meets a library: the library's exception becomes one line.

Every helper takes the setting (``key``) the value came from, so the line reads ``KEY=VALUE: what is wrong; what would
work``, and raises ConfigError (printed by the scripts, exit status 2). A library decoding a user's file may fail with
any exception (torch.load of a text file raises KeyError, of an empty one EOFError with no text): at these calls every
exception is the file's fault, and is worded from what the file holds (empty, text, cut short), not from the library's
text. Addresses are checked with one short TCP connection (``CONNECT_SECONDS``) before a library that retries for
minutes is handed them.
"""

from __future__ import annotations

import os
import socket
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tinyvision import image_folders
from tinyvision.errors import ConfigError

CONNECT_SECONDS = 2.0  # an answer from a server on the same network takes milliseconds; a dead address, forever


# ---------------------------------------------------------------------------------------------- files read


def input_file(key: str, value: str | os.PathLike, fix: str) -> Path:
    """The file a setting names, or one line: missing, a folder, empty or unreadable. ``fix`` says what would work."""
    path = Path(value)
    if not path.exists():
        raise ConfigError(f"{key}={value} does not exist: {fix}")
    if path.is_dir():
        raise ConfigError(f"{key}={value} is a folder, not a file: {fix}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{key}={value} cannot be read: permission denied; {fix}")
    if path.is_file() and path.stat().st_size == 0:
        raise ConfigError(f"{key}={value} cannot be read: the file is empty (0 bytes), perhaps an interrupted copy or "
                          f"download; {fix}")
    return path


def _head(path: Path, size: int = 512) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return b""


def looks_like_text(head: bytes) -> bool:
    if not head or b"\0" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\n\r\t" for c in text)


def _text_start(head: bytes) -> str:
    line = head.decode("utf-8", "replace").strip().splitlines()[0] if head.strip() else ""
    return line[:40] + ("..." if len(line) > 40 else "")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else type(error).__name__


def file_reason(path: Path, error: BaseException, kind: str) -> str:
    """Why ``path`` cannot be read as ``kind`` ("a PyTorch checkpoint"), from what it holds rather than the library's words."""
    size = path.stat().st_size if path.is_file() else 0
    head = _head(path)
    if size == 0:
        return "the file is empty (0 bytes), perhaps an interrupted copy or download"
    if looks_like_text(head):
        return f"it is a text file, not {kind} (it begins {_text_start(head)!r})"
    if head.startswith(b"PK"):  # PyTorch's format is a zip archive: its directory is at the end
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError):
            return f"it is cut short ({size:,} bytes; its zip archive has no end): a truncated copy or an interrupted write"
        if bad is not None:
            return f"it is damaged ({bad} inside fails its checksum)"
    name = type(error).__name__
    if "weights only" in str(error).lower() or "weights_only" in str(error):
        return "it holds Python objects besides tensors, which are not loaded (they could run code)"
    return f"it is not {kind} ({name}: {_first_line(error)})"


def load_torch(key: str, value: str | os.PathLike, kind: str, fix: str) -> Any:
    """``torch.load`` of a user's file (weights only, on the CPU), or one line naming the setting and why."""
    import torch

    path = input_file(key, value, fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any exception here is the file's: see the module's docstring
        raise ConfigError(f"{key}={value} cannot be read: {file_reason(path, error, kind)}; {fix}") from None


def load_weights(key: str, value: str | os.PathLike, fix: str) -> dict[str, Any]:
    """A state dict from a ``.safetensors`` file or a PyTorch file (a bare state dict, or one under ``state_dict``)."""
    path = input_file(key, value, fix)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors' own SafetensorError, or an OSError
            reason = file_reason(path, error, "a safetensors file")
            if "incomplete metadata" in str(error) or "not fully covered" in str(error):
                reason = f"it is cut short ({path.stat().st_size:,} bytes, fewer than its header lists)"
            raise ConfigError(f"{key}={value} cannot be read: {reason}; {fix}") from None
    state = load_torch(key, value, "a PyTorch state dict", fix)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"{key}={value}: it holds no weights (a {type(state).__name__}, not a state dict); {fix}")
    return state


def weights_do_not_fit(key: str, value: Any, error: RuntimeError, model: str, fix: str) -> ConfigError:
    """``load_state_dict``'s refusal (other layer sizes, missing or extra layers) as one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines[1:] if line.startswith(("size mismatch", "Missing key", "Unexpected key"))),
                  lines[-1] if lines else "")
    detail = detail if len(detail) <= 200 else detail[:200] + "..."
    return ConfigError(f"{key}={value}: the weights in this file do not fit {model} ({detail.rstrip('.')}); {fix}")


def is_state_dict_mismatch(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and "Error(s) in loading state_dict" in str(error)


def image_problem(path: Path, error: BaseException) -> str:
    """Why an input of predict.py cannot be read as an image, in a few words."""
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a folder"
    if not path.is_file():
        return "is not a regular file"
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    if looks_like_text(_head(path)):
        return f"is a text file, not an image (it begins {_text_start(_head(path))!r})"
    text = _first_line(error)
    if "truncated" in text or isinstance(error, (EOFError, SyntaxError)):
        return f"is cut short or damaged ({text})"
    return f"cannot be read as an image ({type(error).__name__}: {text})"


# ---------------------------------------------------------------------------------------------- folders written


def output_folder(key: str, value: str | os.PathLike, shown: Any = None, example: Any = None, writable: bool = True) -> Path:
    """A folder a library will create and write into, checked without creating it: no part of its path is a file, and
    (``writable``) the deepest part that exists can be written to. ``shown`` is the setting's value when it is more than
    the folder (a database URL), ``example`` a value that would work."""
    path = Path(value)
    shown = value if shown is None else shown
    example = Path("outputs") / path.name if example is None else example
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                where = f"{part} is a file" if part != Path(str(shown)) else "it is a file"
                raise ConfigError(f"{key}={shown}: {where}, not a folder: choose a path of folders, e.g. {key}={example}")
            if writable and not os.access(part, os.W_OK | os.X_OK):
                raise ConfigError(f"{key}={shown}: {part} cannot be written to (permission denied): choose a folder you "
                                  f"can write to, e.g. {key}={example}")
            return path
    return path


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for an in-memory database or another kind of URL)."""
    if not url.startswith("sqlite:"):
        return None
    rest = url.split(":", 1)[1]
    if not rest.startswith("///"):
        return None
    name = rest[3:].split("?", 1)[0]
    return Path(name) if name and name != ":memory:" else None


def sqlite_parent(key: str, url: str, create: bool) -> None:
    """The folder of a ``sqlite:///`` database: SQLite cannot create it ("unable to open database file"), so it is
    created here (``create``) or only checked; a path through a file, or a folder that cannot be written, is one line."""
    path = sqlite_file(url)
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{key}={url}: {path} is a folder; name the database file, e.g. {key}=sqlite:///{path / 'study.db'}")
    output_folder(key, path.parent, shown=url, example=f"sqlite:///outputs/{path.name}")
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"{key}={url}: its folder {path.parent} cannot be created ({os.strerror(error.errno or 0)}): "
                              f"choose another place, e.g. {key}=sqlite:///outputs/{path.name}") from None


# ---------------------------------------------------------------------------------------------- addresses


def _route(host: str, port: int) -> tuple[str, int]:
    """Where a connection to (host, port) goes: itself. Tests replace this to send every check to a closed local port."""
    return host, port


def answer_problem(url: str, timeout: float = CONNECT_SECONDS) -> str | None:
    """None when a TCP connection to the URL's host and port opens within ``timeout`` seconds, else the reason."""
    parts = urlsplit(url)
    if not parts.hostname:
        return f"{url} names no host"
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme, 443)
    where = f"{parts.hostname}:{port}"
    host, port = _route(parts.hostname, port)
    found: dict[str, Any] = {}

    def resolve() -> None:
        try:
            found["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            found["error"] = error

    # The name lookup has no timeout of its own (a resolver that does not answer holds it for many seconds).
    lookup = threading.Thread(target=resolve, daemon=True)
    lookup.start()
    lookup.join(timeout)
    if lookup.is_alive():
        return f"the name {parts.hostname} does not resolve within {timeout:g} s (no network?)"
    if "error" in found:
        return f"the name {parts.hostname} does not resolve ({found['error'].strerror or found['error']}; no network?)"
    family, kind, proto, _, address = found["addresses"][0]
    with socket.socket(family, kind, proto) as connection:
        connection.settimeout(timeout)
        try:
            connection.connect(address)
        except TimeoutError:
            return f"{where} does not answer within {timeout:g} s"
        except OSError as error:
            return f"{where} does not answer ({error.strerror or error})"
    return None


def first_answering(urls: list[str], timeout: float = CONNECT_SECONDS) -> tuple[str | None, str]:
    """The first of ``urls`` whose server answers, and the reasons of those that did not."""
    reasons = []
    for url in urls:
        problem = answer_problem(url, timeout)
        if problem is None:
            return url, ""
        reasons.append(problem)
    return None, "; ".join(dict.fromkeys(reasons))


# ---------------------------------------------------------------------------------------------- the loggers' places


def check_loggers(loggers: dict[str, Any]) -> None:
    """Before a run starts: every logger's folder can be made, and an MLflow tracking server answers (MLflow itself
    retries an address that does not answer for minutes, then ends the run with a traceback)."""
    for name, settings in (loggers or {}).items():
        if not isinstance(settings, dict):
            continue
        target = str(settings.get("_target_", ""))
        if settings.get("save_dir") is not None:
            output_folder(f"logger.{name}.save_dir", settings["save_dir"])
        if target.endswith("MLFlowLogger"):
            _check_mlflow(name, settings)


def _check_mlflow(name: str, settings: dict[str, Any]) -> None:
    key = f"logger.{name}.tracking_uri"
    uri = settings.get("tracking_uri")
    if uri is None:
        return
    scheme = uri.split(":", 1)[0] if "://" in uri else "file"
    if scheme in ("http", "https"):
        problem = answer_problem(uri)
        if problem is not None:
            raise ConfigError(f"{key}={uri}: no MLflow server answers there ({problem}): start it (mlflow server --host "
                              f"HOST --port PORT) or log to a local file, e.g. {key}=sqlite:///outputs/mlflow.db")
    elif scheme.split("+")[0] in ("postgresql", "mysql", "mariadb", "mssql"):  # MLflow's SQL store, through SQLAlchemy
        problem = database_url_problem(uri)
        if problem is None and (answer := database_server_problem(uri)) is not None:
            problem = f"the database server does not answer ({answer}): start it"
        if problem is not None:
            raise ConfigError(f"{key}={uri}: {problem}, or log to a local file, e.g. {key}=sqlite:///outputs/mlflow.db")
    elif scheme == "sqlite":
        sqlite_parent(key, uri, create=False)  # a missing folder is fine: MLflow's SQL store creates it (Optuna's does not)
    elif scheme == "file":
        output_folder(key, uri[len("file://"):] if uri.startswith("file://") else uri)
    location = settings.get("artifact_location")
    if isinstance(location, str) and ("://" not in location or location.startswith("file://")):
        output_folder(f"logger.{name}.artifact_location", location.removeprefix("file://"))


def database_url_problem(url: str) -> str | None:
    """Why SQLAlchemy cannot open a database URL (no connection is made), or None."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return "not a database URL (dialect://user:password@host/database)"
    try:
        parsed.get_dialect().import_dbapi()  # the driver package (MySQLdb, psycopg2, ...) is imported only here
    except NoSuchModuleError:
        return f"SQLAlchemy knows no database {parsed.drivername!r} (sqlite, postgresql, mysql, ...)"
    except ImportError as error:
        return (f"the driver for {parsed.drivername} is not installed ({_first_line(error)}): install it, or name one "
                f"that is in the URL ({parsed.get_backend_name()}+<driver>://...)")
    return None


def database_server_problem(url: str) -> str | None:
    """Why the database server of a URL does not answer a short connection (a driver retries for minutes), or None;
    None for a file database."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.host:
        return None
    default_port = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}.get(parsed.get_backend_name(), 5432)
    return answer_problem(f"tcp://{parsed.host}:{parsed.port or default_port}")


# ---------------------------------------------------------------------------------------------- the data's places


def check_data(data: Mapping[str, Any]) -> int | None:
    """An image folder's cache folder can be made, and the folder holds at least two classes; with ``data.num_classes``
    left null, the number of its class folders (YOLO's way: the folder says how many classes it has), else None."""
    if not str(data.get("_target_", "")).endswith("FolderDataModule"):
        return None
    if data.get("cache_dir"):
        output_folder("data.cache_dir", data["cache_dir"], example="data/cache")
    root = Path(str(data.get("root")))
    if not root.is_dir():
        if data.get("num_classes") is None:
            raise ConfigError(f"data.root={data.get('root')} does not exist: point data.root at a directory with one "
                              "subfolder of images per class (optionally inside train/ and test/)")
        return None  # the data module names a missing folder
    classes = image_folders.class_folders(image_folders.split_roots(root)["train"])
    if len(classes) == 1:
        raise ConfigError(f"data.root={data.get('root')} has one class folder ({classes[0]}): a classifier needs at least two "
                          "class folders, one per class, each holding that class's images: add a folder for each other class")
    if data.get("num_classes") is None:
        if not classes:
            raise ConfigError(f"data.root={data.get('root')} has no class subfolders: put the images of each class in a "
                              "subfolder")
        return len(classes)
    return None
