"""Helpers that build archives and edit model files for the validation tests."""

import io
import json
import struct
import tarfile
import zipfile
from pathlib import Path


def tar_folder(folder: Path, out: Path, mode: str = "w:gz", arcname: str = ".") -> Path:
    with tarfile.open(out, mode) as tf:
        tf.add(folder, arcname=arcname)
    return out


def zip_folder(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder).as_posix())
    return out


def tar_with(folder: Path, out: Path, extra: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    """The model folder plus hand-made members (links, devices, hostile names)."""
    data = data or {}
    with tarfile.open(out, "w") as tf:
        tf.add(folder, arcname=".")
        for info in extra:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            else:
                tf.addfile(info)
    return out


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


def edit_safetensors_header(path: Path, edit) -> None:
    """Rewrite a safetensors header in place with `edit(header_dict)`, keeping the tensor bytes."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
