"""Safe extraction of zip, tar and tar.gz archives into one folder.

Only regular files and folders are accepted. Names are checked before anything is written, sizes
are counted from the bytes actually produced (headers can lie), and every file is created with
O_EXCL|O_NOFOLLOW below a folder we created ourselves, so nothing can land outside `dest`.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from evaluation.validation.errors import ValidationFailed
from evaluation.validation.rules import Rules

PIECE = 1024 * 1024


@dataclass
class _Member:
    name: str
    is_dir: bool
    size: int  # as declared
    compressed: int | None  # zip only
    open: callable  # returns a binary stream


def detect_format(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise ValidationFailed(
        path.name,
        "is not a zip, tar or tar.gz archive.",
        "Pack the model folder with `tar -czf model.tar.gz -C out .` or `zip -r model.zip .` and upload that file.",
    )


def check_name(raw: str) -> str | None:
    """The member's safe relative path, or raise. Returns None for the archive's own root entry."""
    fix = "Pack the folder with relative paths only, e.g. `tar -czf model.tar.gz -C out .`."
    if "\x00" in raw or "\\" in raw:
        raise ValidationFailed(raw, "has a backslash or NUL byte in its name.", fix)
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise ValidationFailed(raw, "is an absolute path in the archive.", fix)
    parts = [p for p in PurePosixPath(raw).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValidationFailed(raw, "climbs out of the folder with `..`.", fix)
    if not parts:
        return None
    if len(raw) > 1024 or any(len(p) > 255 for p in parts):
        raise ValidationFailed(raw[:80], "has a name too long.", "Use shorter file names.")
    return "/".join(parts)


def _zip_members(zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if info.flag_bits & 0x1:
            raise ValidationFailed(info.filename, "is encrypted.", "Upload an archive without a password.")
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            what = "a symbolic link" if kind == stat.S_IFLNK else "not a regular file"
            raise ValidationFailed(
                info.filename,
                f"is {what}; only regular files are accepted.",
                "Copy the real file into the folder instead of linking it.",
            )
        yield _Member(
            name=info.filename,
            is_dir=info.is_dir(),
            size=info.file_size,
            compressed=info.compress_size,
            open=lambda info=info: zf.open(info),
        )


def _tar_members(tf: tarfile.TarFile) -> Iterator[_Member]:
    for info in tf:
        if info.issym() or info.islnk():
            kind = "a symbolic link" if info.issym() else "a hard link"
            raise ValidationFailed(
                info.name,
                f"is {kind} (to {info.linkname!r}); only regular files are accepted.",
                "Copy the real file into the folder instead of linking it (`tar --dereference`).",
            )
        if info.ischr() or info.isblk() or info.isfifo() or info.isdev():
            raise ValidationFailed(
                info.name, "is a device or pipe; only regular files are accepted.", "Remove it from the archive."
            )
        if not (info.isreg() or info.isdir()):
            raise ValidationFailed(info.name, "is not a regular file or folder.", "Remove it from the archive.")
        yield _Member(
            name=info.name,
            is_dir=info.isdir(),
            size=info.size,
            compressed=None,
            open=lambda info=info: tf.extractfile(info),
        )


def _open_dir_fd(root_fd: int, parts: list[str]) -> int:
    """Walk (creating) the folders below root without ever following a link."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def safe_extract(archive: Path, dest: Path, rules: Rules) -> list[str]:
    """Extract `archive` into the empty folder `dest`; return the relative file names written."""
    fmt = detect_format(archive)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise RuntimeError(f"{dest} is not empty")
    archive_size = archive.stat().st_size
    written_files: list[str] = []
    seen: set[str] = set()
    total = 0
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if fmt == "zip":
            try:
                container = zipfile.ZipFile(archive)
            except zipfile.BadZipFile as exc:
                raise ValidationFailed(
                    archive.name, f"is not a readable zip file ({exc}).", "Create the archive again and re-upload it."
                )
            members = _zip_members(container)
        else:
            try:
                container = tarfile.open(archive, "r|gz" if fmt == "tar.gz" else "r|")
            except tarfile.TarError as exc:
                raise ValidationFailed(
                    archive.name, f"is not a readable tar file ({exc}).", "Create the archive again and re-upload it."
                )
            members = _tar_members(container)
        with container:
            try:
                for member in members:
                    name = check_name(member.name)
                    if name is None:
                        continue
                    if name in seen:
                        raise ValidationFailed(name, "appears twice in the archive.", "Pack each file once.")
                    seen.add(name)
                    parts = name.split("/")
                    if member.is_dir:
                        os.close(_open_dir_fd(root_fd, parts))
                        continue
                    if len(written_files) >= rules.max_files:
                        raise ValidationFailed(
                            archive.name,
                            f"holds more than {rules.max_files} files.",
                            "Upload only the model files (config, tokenizer, safetensors shards).",
                        )
                    total = _write_member(root_fd, parts, member, total, archive_size, rules)
                    written_files.append(name)
            except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
                if isinstance(exc, ValidationFailed):
                    raise
                raise ValidationFailed(
                    archive.name,
                    f"could not be read to the end ({type(exc).__name__}: {exc}).",
                    "The archive is damaged or truncated: create it again and re-upload it.",
                )
    finally:
        os.close(root_fd)
    if not written_files:
        raise ValidationFailed(archive.name, "contains no files.", "Put the model folder's files in the archive.")
    return written_files


def _write_member(root_fd: int, parts: list[str], member: _Member, total: int, archive_size: int, rules: Rules) -> int:
    dir_fd = _open_dir_fd(root_fd, parts[:-1])
    name = "/".join(parts)
    try:
        try:
            out_fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
        except (FileExistsError, IsADirectoryError):
            raise ValidationFailed(name, "clashes with another entry of the same name.", "Pack each file once.")
        written = 0
        src: BinaryIO = member.open()
        with os.fdopen(out_fd, "wb") as out, src:
            while piece := src.read(PIECE):
                written += len(piece)
                total += len(piece)
                if total > rules.max_total_bytes:
                    raise ValidationFailed(
                        name,
                        f"takes the archive past {rules.max_total_bytes / 1024**3:.1f} GiB uncompressed.",
                        "Upload only the model files; this looks like a compression bomb or a wrong folder.",
                    )
                if written > rules.ratio_min_bytes:
                    # zip: per member; tar.gz: the whole stream against the archive's size.
                    base = member.compressed if member.compressed is not None else archive_size
                    if base and (written if member.compressed is not None else total) / base > rules.max_ratio:
                        raise ValidationFailed(
                            name,
                            f"expands more than {rules.max_ratio:.0f}× its compressed size.",
                            "Weights do not compress like that: this looks like a compression bomb. Upload the real model files.",
                        )
                out.write(piece)
        return total
    finally:
        os.close(dir_fd)
