"""Every file the project reads from outside or writes, in one place.

Reads are bounded and strict: a file is read up to a size limit, text must be UTF-8, YAML is parsed
safely with limits on nesting and on how far aliases may expand, JSON and YAML trees are checked
against the keys and types their reader expects, and weights are loaded with `weights_only=True`.
Writes are atomic: a temporary file beside the target, fsync, rename; the old file stays intact on any
failure. Every failure is a UserError naming the path.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
from pathlib import Path

import yaml

from .errors import UserError, reason, shown

MAX_TEXT_BYTES = 4 << 20  # configs, experiment files, run records: far larger is not a config
MAX_YAML_DEPTH = 32
MAX_TREE_ITEMS = 200_000  # values in a parsed tree, counting every use of an alias


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc, since 4.7): setting and
    restoring it, the only other way, races with a thread that creates a file in between."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> None:
    """Call write(file) on a temporary file beside `path`, fsync it, then rename it over `path`.
    The file gets the modes any new file gets (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", dir=path.parent)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes | memoryview) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_yaml(path, data) -> None:
    write_text(path, yaml.safe_dump(data, sort_keys=False))


def save_torch(path, state) -> None:
    """torch.save into memory first: a full disk is then an OSError of the write, not a torn archive."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getbuffer())


def save_figure(fig, path) -> None:
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip("."), dpi=150, bbox_inches="tight")
    write_bytes(path, buffer.getbuffer())


def check_regular(path, what: str = "file") -> Path:
    """`path` if it is a regular file (or a missing one, which the reader reports); a FIFO, device or socket,
    whose reading could block forever or never end, is one error. Every input is opened through this."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return path
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise UserError(f"{what} {path} is {kind}, not a regular file; give a file")
    return path


def read_bytes(path, what: str = "file", limit: int = MAX_TEXT_BYTES) -> bytes:
    """At most `limit` bytes (a longer file, /dev/zero or a pipe is an error)."""
    path = check_regular(path, what)
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, not a file") from None
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if len(data) > limit:
        raise UserError(f"{what} {path} is larger than {limit >> 20} MiB; that is not a {what}")
    return data


def read_text(path, what: str = "file", limit: int = MAX_TEXT_BYTES) -> str:
    data = read_bytes(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {error.start})") from None


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader (no Python tags) that refuses deep nesting while it composes."""

    def compose_node(self, parent, index):
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def check_tree_size(tree, where, limit: int = MAX_TREE_ITEMS) -> None:
    """Refuse a tree whose values, counting each use of a shared (aliased) value, exceed `limit`:
    an alias bomb is a small file that expands to billions of items."""
    stack, count = [tree], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            raise UserError(f"{where} expands to more than {limit} values (aliases used over and over?)")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def parse_yaml(text: str, where):
    try:
        tree = yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise UserError(f"{where} is not valid YAML: {reason(error, 120)}") from None
    except RecursionError:
        raise UserError(f"{where} is nested too deeply") from None
    check_tree_size(tree, where)
    return tree


def read_yaml(path, what: str = "YAML file"):
    return parse_yaml(read_text(path, what), f"{what} {path}")


def read_json(path, what: str = "file"):
    text = read_text(path, what)
    try:
        tree = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise UserError(f"{what} {path} is not valid JSON ({reason(error, 80)})") from None
    check_tree_size(tree, f"{what} {path}")
    return tree


def check_fields(tree, fields: dict, where) -> dict:
    """`tree` must be a mapping holding each key of `fields` with a value of that type (or types)."""
    if not isinstance(tree, dict):
        raise UserError(f"{where} must hold a mapping, found {type(tree).__name__}")
    for key, kind in fields.items():
        value = tree.get(key)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if key not in tree or not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise UserError(f"{where}: {key!r} must be {names}, found {shown(value)}")
    return tree


def load_torch(path, what: str = "checkpoint") -> dict:
    """A weights-only torch file (no pickled code runs); anything else is one error naming it."""
    import torch

    path = check_regular(path, what)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except Exception as error:  # a torn or foreign file: say which, never unpickle code
        why = reason(error, 120)
        if "Weights only load failed" in why:
            why = "it holds objects other than tensors and plain containers, which could run code"
        raise UserError(f"cannot load {what} {path}: {why}") from None
    if not isinstance(state, dict):
        raise UserError(f"{what} {path} holds a {type(state).__name__}, not a fixedhead state dict")
    return state
