"""Pack a model folder into a .tar.gz whose bytes depend only on the folder's contents.

Deterministic bytes matter for resuming: packing the same folder again yields the same archive, so an
interrupted upload can continue where it stopped even after the command was restarted.
"""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path


class PackError(Exception):
    pass


def _files(folder: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs.sort()
        root_path = Path(root)
        for name in list(dirs):
            if (root_path / name).is_symlink():
                raise PackError(f"{root_path / name} is a symbolic link; copy the real folder in its place.")
            if name.startswith(".") and name in {".git", ".cache", ".ipynb_checkpoints"}:
                dirs.remove(name)
        for name in sorted(names):
            path = root_path / name
            if path.is_symlink():
                raise PackError(
                    f"{path} is a symbolic link; the portal rejects links. Copy the real file in its place."
                )
            if path.is_file():
                found.append(path)
    return found


def pack(folder: str | Path, destination: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise PackError(
            f"{folder} is not a folder. Point --model at the folder with config.json or adapter_config.json."
        )
    files = _files(folder)
    if not files:
        raise PackError(f"{folder} is empty.")
    names = {path.relative_to(folder).as_posix() for path in files}
    if not names & {"config.json", "adapter_config.json"}:
        raise PackError(
            f"{folder} has neither config.json nor adapter_config.json at its top: is it the model's output folder?"
        )
    destination = Path(destination)
    with open(destination, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for path in files:
                info = archive.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(path, "rb") as handle:
                    archive.addfile(info, handle)
    return destination
