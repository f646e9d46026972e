"""The hostile-archive corpus: each archive is built here, rejected with its own message, and leaves
nothing outside the submission's folder. The valid full, sharded and adapter models pass."""

import io
import os
import pickle
import shutil
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from evaluation.validation import BaseInfo, Rules, ValidationFailed, validate_archive
from tests.evaluation.archive_tools import (
    edit_json,
    edit_safetensors_header,
    member,
    tar_folder,
    tar_with,
    zip_folder,
)

EMB = "model.embed_tokens.weight"


class WritesMarker:
    """Unpickling this creates the marker file: the proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def sandbox(tmp_path, model_dirs):
    """Where archives are built, the submission's folder, and a snapshot to prove nothing leaks."""
    work = tmp_path / "work"
    work.mkdir()
    submission = tmp_path / "submissions" / "7"
    marker = tmp_path / "PICKLE_WAS_LOADED"
    rules = Rules(
        bases=(BaseInfo("tiny-llama", "LlamaForCausalLM", 144_960, str(model_dirs["full"])),),
        declared_base="tiny-llama",
        memory_budget_gb=24,
    )
    return {"tmp": tmp_path, "work": work, "dest": submission / "model", "marker": marker, "rules": rules}


def _outside_files(tmp: Path) -> set[str]:
    return {
        p.relative_to(tmp).as_posix()
        for p in tmp.rglob("*")
        if not p.relative_to(tmp).as_posix().startswith(("work", "submissions"))
    }


def reject(sandbox, archive: Path, expected: str, rules: Rules | None = None) -> ValidationFailed:
    before = _outside_files(sandbox["tmp"])
    with pytest.raises(ValidationFailed) as info:
        validate_archive(archive, sandbox["dest"], rules or sandbox["rules"])
    assert expected in info.value.message, info.value.message
    assert not sandbox["marker"].exists(), "a pickle was loaded"
    assert _outside_files(sandbox["tmp"]) == before, "something was written outside the submission folder"
    assert not any(p.is_symlink() for p in sandbox["dest"].parent.rglob("*"))
    # Every message names a file and says how to fix it.
    assert info.value.file and info.value.fix
    return info.value


def model(sandbox, model_dirs, kind: str = "full") -> Path:
    dest = sandbox["work"] / f"model-{kind}"
    shutil.copytree(model_dirs[kind], dest)
    return dest


# --- valid submissions -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["tar.gz", "tar", "zip", "tar-with-top-folder"])
def test_valid_full_model_is_accepted_in_every_format(sandbox, model_dirs, fmt):
    folder = model(sandbox, model_dirs)
    out = sandbox["work"] / f"m.{fmt}"
    if fmt == "zip":
        zip_folder(folder, out)
    elif fmt == "tar-with-top-folder":
        tar_folder(folder, out, "w:gz", arcname="my-model")
    else:
        tar_folder(folder, out, "w:gz" if fmt == "tar.gz" else "w")
    result = validate_archive(out, sandbox["dest"], sandbox["rules"])
    assert result.kind == "full" and result.architecture == "LlamaForCausalLM"
    assert (result.path / "model.safetensors").is_file()
    assert result.path.is_relative_to(sandbox["dest"])
    assert result.parameter_count == 144_960
    assert 0 < result.estimated_memory_gb < 24


def test_valid_sharded_model_with_index_is_accepted(sandbox, model_dirs):
    folder = model(sandbox, model_dirs, "sharded")
    assert (folder / "model.safetensors.index.json").is_file()
    result = validate_archive(tar_folder(folder, sandbox["work"] / "s.tar.gz"), sandbox["dest"], sandbox["rules"])
    assert result.parameter_count == 144_960
    assert sum(1 for f in result.files if f.endswith(".safetensors")) > 1


def test_valid_lora_adapter_is_accepted(sandbox, model_dirs):
    folder = model(sandbox, model_dirs, "adapter")
    result = validate_archive(tar_folder(folder, sandbox["work"] / "a.tar.gz"), sandbox["dest"], sandbox["rules"])
    assert result.kind == "adapter" and result.base_name == "tiny-llama"
    assert result.parameter_count > 144_960


# --- archive safety ----------------------------------------------------------------------------


def test_pickle_that_would_write_a_marker_is_never_loaded(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(WritesMarker(sandbox["marker"])))
    err = reject(sandbox, tar_folder(folder, sandbox["work"] / "p.tar.gz"), "pickle-based")
    assert err.file == "pytorch_model.bin" and "safetensors" in err.fix


def test_pickle_disguised_as_safetensors_is_never_loaded(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    (folder / "model.safetensors").write_bytes(pickle.dumps(WritesMarker(sandbox["marker"])))
    reject(sandbox, tar_folder(folder, sandbox["work"] / "p.tar.gz"), "model.safetensors")


def test_training_args_pickle_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    (folder / "training_args.bin").write_bytes(pickle.dumps({"lr": 1e-4}))
    reject(sandbox, tar_folder(folder, sandbox["work"] / "p.tar.gz"), "training_args.bin: is a pickle-based file")


def test_path_traversal_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    out = tar_with(folder, sandbox["work"] / "t.tar", [member("../../evil.txt")], {"../../evil.txt": b"x"})
    reject(sandbox, out, "climbs out")
    assert not (sandbox["tmp"] / "evil.txt").exists()


def test_absolute_path_is_rejected(sandbox, model_dirs):
    target = sandbox["tmp"] / "absolute-evil.txt"
    folder = model(sandbox, model_dirs)
    out = tar_with(folder, sandbox["work"] / "t.tar", [member(str(target))], {str(target): b"x"})
    reject(sandbox, out, "absolute path")
    assert not target.exists()


def test_backslash_traversal_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    out = tar_with(folder, sandbox["work"] / "t.tar", [member("..\\evil.txt")], {"..\\evil.txt": b"x"})
    reject(sandbox, out, "backslash")


def test_symlink_escape_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    out = tar_with(
        folder,
        sandbox["work"] / "t.tar",
        [member("escape", tarfile.SYMTYPE, str(sandbox["tmp"])), member("escape/evil.txt")],
        {"escape/evil.txt": b"x"},
    )
    reject(sandbox, out, "symbolic link")
    assert not (sandbox["tmp"] / "evil.txt").exists()


def test_symlink_in_zip_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    out = zip_folder(folder, sandbox["work"] / "z.zip")
    with zipfile.ZipFile(out, "a") as zf:
        info = zipfile.ZipInfo("tokenizer_link.json")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    reject(sandbox, out, "symbolic link")


def test_hard_link_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    out = tar_with(folder, sandbox["work"] / "t.tar", [member("hard.json", tarfile.LNKTYPE, "/etc/passwd")])
    reject(sandbox, out, "hard link")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_device_files_and_pipes_are_rejected(sandbox, model_dirs, kind):
    folder = model(sandbox, model_dirs)
    out = tar_with(folder, sandbox["work"] / "t.tar", [member("dev", kind)])
    reject(sandbox, out, "device or pipe")


def test_tar_gz_compression_bomb_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    out = sandbox["work"] / "bomb.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        tf.add(folder, arcname=".")
        info = tarfile.TarInfo("zeros.safetensors")
        info.size = 64 * 1024**2
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    assert out.stat().st_size < 2 * 1024**2
    reject(sandbox, out, "compression bomb")


def test_zip_compression_bomb_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    out = zip_folder(folder, sandbox["work"] / "bomb.zip")
    with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.safetensors", bytes(64 * 1024**2))
    reject(sandbox, out, "compression bomb")


def test_total_unpacked_size_is_capped(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    rules = Rules(**{**sandbox["rules"].__dict__, "max_total_bytes": 100_000})
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar"), "uncompressed", rules)


def test_too_many_files_are_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    for i in range(10):
        (folder / f"notes-{i}.txt").write_text("x")
    rules = Rules(**{**sandbox["rules"].__dict__, "max_files": 8})
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "more than 8 files", rules)


def test_duplicate_member_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    out = tar_with(folder, sandbox["work"] / "t.tar", [member("config.json")], {"config.json": b"{}"})
    reject(sandbox, out, "appears twice")


def test_not_an_archive_is_rejected(sandbox):
    out = sandbox["work"] / "random.tar.gz"
    out.write_bytes(os.urandom(4096))
    reject(sandbox, out, "is not a zip, tar or tar.gz archive")


def test_truncated_archive_is_rejected(sandbox, model_dirs):
    full = tar_folder(model(sandbox, model_dirs), sandbox["work"] / "t.tar.gz")
    cut = sandbox["work"] / "cut.tar.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    reject(sandbox, cut, "truncated")


# --- no code -----------------------------------------------------------------------------------


def test_auto_map_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    edit_json(folder / "config.json", lambda c: c.update(auto_map={"AutoModelForCausalLM": "modeling_evil.EvilModel"}))
    err = reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "auto_map")
    assert err.file == "config.json"


def test_auto_map_in_tokenizer_config_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(auto_map={"AutoTokenizer": ["tok_evil.T", None]}))
    err = reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "auto_map")
    assert err.file == "tokenizer_config.json"


def test_python_file_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    (folder / "modeling_evil.py").write_text(f"open({str(sandbox['marker'])!r}, 'w')\n")
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "modeling_evil.py: is code")


def test_unknown_file_type_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    (folder / "payload.exe.dat").write_bytes(b"MZ")
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "not a file type a model folder needs")


# --- weights -----------------------------------------------------------------------------------


def test_oversized_safetensors_header_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    raw = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + raw[8:])
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "above the 16,777,216-byte limit")


def test_shapes_contradicting_config_are_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    edit_json(folder / "config.json", lambda c: c.update(intermediate_size=c["intermediate_size"] * 2))
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "config.json implies")


def test_header_shape_disagreeing_with_bytes_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    edit_safetensors_header(folder / "model.safetensors", lambda h: h[EMB].update(shape=[h[EMB]["shape"][0], 1]))
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "stores")


def test_junk_dtype_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    edit_safetensors_header(folder / "model.safetensors", lambda h: h[EMB].update(dtype="F33"))
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "unknown dtype 'F33'")


def test_integer_weights_are_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    edit_safetensors_header(folder / "model.safetensors", lambda h: h[EMB].update(dtype="I32"))
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "weights must be float32")


def test_truncated_safetensors_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "offsets outside the file")


def test_missing_weights_are_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    (folder / "model.safetensors").unlink()
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "no safetensors weights")


def test_missing_shard_of_index_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs, "sharded")
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.unlink()
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "is listed in model.safetensors.index.json")


def test_missing_tensor_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs, "sharded")
    index = folder / "model.safetensors.index.json"
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    names = []
    edit_safetensors_header(shard, lambda h: names.extend(k for k in h if k != "__metadata__"))
    # Drop one shard and its entries: the index and the weights agree, but a tensor is missing.
    shard.unlink()
    edit_json(index, lambda i: [i["weight_map"].pop(n) for n in names])
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "is missing from the weights")


# --- config, tokenizer, memory -------------------------------------------------------------------


def test_missing_tokenizer_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    (folder / "tokenizer.json").unlink()
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "tokenizer.json: is missing")


def test_broken_tokenizer_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    (folder / "tokenizer.json").write_text('{"model": {"type": "Nonsense"}}')
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "could not be loaded offline")


def test_architecture_not_on_allow_list_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs, "gpt2")
    reject(
        sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "'GPT2LMHeadModel', which is not on the allow-list"
    )


def test_architecture_renamed_but_model_type_differs_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs, "gpt2")
    edit_json(folder / "config.json", lambda c: c.update(architectures=["LlamaForCausalLM"]))
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "builds a different model")


def test_unknown_model_type_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs)
    edit_json(folder / "config.json", lambda c: c.update(model_type="evil_custom"))
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "cannot be turned into a model")


def test_model_too_big_for_the_track_is_rejected(sandbox, model_dirs):
    rules = Rules(**{**sandbox["rules"].__dict__, "memory_budget_gb": 0.5})
    reject(
        sandbox,
        tar_folder(model(sandbox, model_dirs), sandbox["work"] / "t.tar.gz"),
        "above this track's 0.5 GB",
        rules,
    )


# --- adapters ----------------------------------------------------------------------------------


def test_adapter_on_a_base_not_allowed_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs, "adapter")
    edit_json(folder / "adapter_config.json", lambda c: c.update(base_model_name_or_path="evil-corp/secret-70b"))
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "not on the organizers' allow-list")


def test_adapter_whose_shapes_do_not_fit_the_base_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs, "adapter")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    edit_safetensors_header(folder / "adapter_model.safetensors", lambda h: h[key].update(shape=[2, 128]))
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "on tiny-llama it must be [r, 64]")


def test_adapter_rank_disagreeing_with_config_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs, "adapter")
    edit_json(folder / "adapter_config.json", lambda c: c.update(r=8))
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "says r=8")


def test_adapter_as_pickle_is_rejected(sandbox, model_dirs):
    folder = model(sandbox, model_dirs, "adapter")
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(pickle.dumps(WritesMarker(sandbox["marker"])))
    reject(sandbox, tar_folder(folder, sandbox["work"] / "t.tar.gz"), "adapter_model.bin: is a pickle-based file")


def test_adapter_declared_on_another_base_is_rejected(sandbox, model_dirs):
    other = BaseInfo("tiny-llama-2", "LlamaForCausalLM", 144_960, str(model_dirs["full"]))
    rules = Rules(
        **{**sandbox["rules"].__dict__, "bases": (*sandbox["rules"].bases, other), "declared_base": "tiny-llama-2"}
    )
    reject(
        sandbox,
        tar_folder(model(sandbox, model_dirs, "adapter"), sandbox["work"] / "t.tar.gz"),
        "declares tiny-llama-2",
        rules,
    )


def test_validation_code_never_trusts_remote_code_nor_unpickles():
    import re

    root = Path(__file__).resolve().parents[2] / "evaluation"
    files = [*root.joinpath("validation").rglob("*.py"), *root.joinpath("services").rglob("*.py"), root / "tasks.py"]
    pattern = re.compile(r"trust_remote_code\s*=\s*True|pickle\.loads?\(|torch\.load\(|import_module\(")
    assert files and [p.name for p in files if pattern.search(p.read_text())] == []
