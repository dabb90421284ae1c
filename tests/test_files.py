"""Files you can trust: every loader refuses a corrupt, truncated or edited file with
CheckpointError (or gives back the very model that was saved), validates before it allocates, and
plans set nothing but the size attributes pdprune recorded."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import warnings
from functools import cache
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pdprune
from pdprune import CheckpointError
from pdprune.baselines import GMP
from pdprune.export import load_dense, load_sparse, save_dense, save_sparse
from pdprune.integrity import canonical_json, text_digest
from tests.file_models import ConvNet, HeadNet, conv_input, head_input, pruned_mlp, shrunk
from tests.helpers import config, mlp, train_steps

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------ honest files, made once
@cache
def honest() -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix="pdprune-files-"))
    model = pruned_mlp()
    save_sparse(model, folder / "m.sparse.safetensors")
    save_dense(model, folder / "m.safetensors")
    files: dict[str, object] = {"folder": folder, "model": model}
    for kind in ("conv", "heads"):
        pruner = shrunk(kind)
        pdprune.save_shrunk(pruner, folder / kind)
        files[kind] = pruner.model
    return files


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(_bits(a[k]), _bits(b[k]))
        for k in a
    )


def _load_sparse_outcome(path: Path) -> None:
    """CheckpointError, or exactly the saved state."""
    try:
        state = load_sparse(path)
    except CheckpointError:
        return
    assert _same_state(state, honest()["model"].state_dict())  # type: ignore[union-attr]


def _load_dense_outcome(path: Path) -> None:
    target = pruned_mlp(seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    try:
        load_dense(target, path)
    except CheckpointError:
        assert _same_state(target.state_dict(), before)  # a refused file changes nothing
        return
    assert _same_state(target.state_dict(), honest()["model"].state_dict())  # type: ignore[union-attr]


def _load_shrunk_outcome(folder: Path, kind: str) -> None:
    build, x = (ConvNet, conv_input()) if kind == "conv" else (HeadNet, head_input())
    try:
        model = pdprune.load_shrunk(folder, build).eval()
    except CheckpointError:
        return
    reference = honest()[kind]
    assert _same_state(model.state_dict(), reference.state_dict())  # type: ignore[union-attr]
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))  # type: ignore[operator]


# ------------------------------------------------------------------ mutations
@st.composite
def byte_damage(draw: st.DrawFn, data: bytes) -> bytes:
    """A truncation, flipped bytes, garbage appended, or a slice moved."""
    kind = draw(st.sampled_from(["truncate", "flip", "append", "splice"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    if kind == "splice":
        start = draw(st.integers(0, len(data) - 1))
        stop = draw(st.integers(start, min(len(data), start + 32)))
        return data[:start] + data[stop:] + data[start:stop]
    damaged = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(data) - 1))
        damaged[position] ^= draw(st.integers(1, 255))
    return bytes(damaged)


JSON_VALUES = st.one_of(
    st.integers(-(2**40), 2**40),
    st.sampled_from([0, 1, -1, 2**31, 10**12, True, None, 1.5, "", "float64", "int8", "dense", "bitmask"]),
    st.sampled_from(["F32", "I32", "F64", "I64", "U16", "F16", "BF16", "pdprune-sparse-1", 1, 2]),
    st.text(max_size=8),
    st.lists(st.integers(-2, 2**31), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found += _paths(child, (*prefix, i))
    return found


@st.composite
def json_edit(draw: st.DrawFn, document: object) -> object:
    """``document`` with one value replaced, one key removed, or one key added."""
    document = json.loads(json.dumps(document))
    path = draw(st.sampled_from([p for p in _paths(document) if p]))
    parent = document
    for step in path[:-1]:
        parent = parent[step]  # type: ignore[index]
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "remove" and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=6))] = draw(JSON_VALUES)
    else:
        parent[path[-1]] = draw(JSON_VALUES)  # type: ignore[index]
    return document


def _header(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _with_header(header: dict, rest: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + rest


@st.composite
def metadata_edit(draw: st.DrawFn, data: bytes) -> bytes:
    """An edit of the safetensors header: of the tensor table, or of pdprune's description, with
    its checksum recomputed (a deliberate edit) or not (corruption)."""
    header, rest = _header(data)
    if draw(st.booleans()):
        description = json.loads(header["__metadata__"]["pdprune"])
        edited = canonical_json(draw(json_edit(description)))
        header["__metadata__"]["pdprune"] = edited
        if draw(st.booleans()):
            header["__metadata__"]["sha256"] = text_digest(edited)
    else:
        header = draw(json_edit(header))
    return _with_header(header, rest)


def _reseal(plan: dict) -> dict:
    body = {k: v for k, v in plan.items() if k != "checksum"}
    return {**body, "checksum": text_digest(canonical_json(body))}


# ------------------------------------------------------------------ fuzz: every format
@pytest.mark.parametrize("loader", ["sparse", "dense"])
@FUZZ
@given(data=st.data())
def test_a_damaged_checkpoint_is_refused_or_loads_identical(tmp_path, loader, data):
    source = honest()["folder"] / ("m.sparse.safetensors" if loader == "sparse" else "m.safetensors")  # type: ignore[operator]
    raw = source.read_bytes()
    damaged = data.draw(st.one_of(byte_damage(raw), metadata_edit(raw)))
    path = tmp_path / "bad.safetensors"
    path.write_bytes(damaged)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an edit can make it look like a plain safetensors file
        (_load_sparse_outcome if loader == "sparse" else _load_dense_outcome)(path)


@pytest.mark.parametrize("kind", ["conv", "heads"])
@FUZZ
@given(data=st.data())
def test_a_damaged_shrunk_folder_is_refused_or_loads_identical(tmp_path, kind, data):
    source = honest()["folder"] / kind  # type: ignore[operator]
    folder = tmp_path / "model"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(source, folder)
    target = data.draw(st.sampled_from(["plan bytes", "plan edit", "plan edit resealed", "weights"]))
    if target == "weights":
        raw = (source / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data.draw(st.one_of(byte_damage(raw), metadata_edit(raw))))
    elif target == "plan bytes":
        (folder / "plan.json").write_bytes(data.draw(byte_damage((source / "plan.json").read_bytes())))
    else:
        plan = data.draw(json_edit(json.loads((source / "plan.json").read_text())))
        if target == "plan edit resealed":
            plan = _reseal(plan)
        (folder / "plan.json").write_text(json.dumps(plan))
    _load_shrunk_outcome(folder, kind)


# ------------------------------------------------------------------ the probe's cases, by name
def _edit_plan(folder: Path, edit) -> None:
    plan = json.loads((folder / "plan.json").read_text())
    edit(plan)
    (folder / "plan.json").write_text(json.dumps(_reseal(plan)))


@pytest.mark.parametrize(
    "attribute, value",
    [
        ("c1.padding", 0),
        ("c1.stride", 3),
        ("b1.eps", 1000),
        ("forward", 1),
        ("_forward_pre_hooks", 1),
        ("training", 5),
        ("c1.out_channels", 999),
        ("c1.out_channels", 4),
        ("b1.num_features", 10**30),
    ],
)
def test_a_plan_cannot_set_attributes_pdprune_did_not_record(tmp_path, attribute, value):
    folder = tmp_path / "conv"
    shutil.copytree(honest()["folder"] / "conv", folder)  # type: ignore[operator]
    _edit_plan(folder, lambda plan: plan["declared"]["attributes"].__setitem__(attribute, value))
    with pytest.raises(CheckpointError, match=r"declared\.attributes") as error:
        pdprune.load_shrunk(folder, ConvNet)
    assert str(folder / "plan.json") in str(error.value)


def test_declared_head_counts_must_match_what_the_group_recorded(tmp_path):
    folder = tmp_path / "heads"
    shutil.copytree(honest()["folder"] / "heads", folder)  # type: ignore[operator]
    _edit_plan(folder, lambda plan: plan["declared"]["attributes"].__setitem__("heads", 3))
    with pytest.raises(CheckpointError, match=r"declared.attributes.heads: 4 -> 3; expected 4 -> 2"):
        pdprune.load_shrunk(folder, HeadNet)
    folder2 = tmp_path / "heads2"
    shutil.copytree(honest()["folder"] / "heads", folder2)  # type: ignore[operator]
    _edit_plan(
        folder2,
        lambda plan: plan["declared"]["groups"][0]["counts"].__setitem__("embed.num_embeddings", "units"),
    )
    _edit_plan(folder2, lambda plan: plan["declared"]["attributes"].__setitem__("embed.num_embeddings", 2))
    with pytest.raises(CheckpointError, match=r"embed\.num_embeddings"):
        pdprune.load_shrunk(folder2, HeadNet)


def test_a_head_count_the_group_records_cannot_be_dropped_from_the_plan(tmp_path):
    # Without it the model keeps its old head count over fewer channels: same weights, other outputs.
    folder = tmp_path / "heads"
    shutil.copytree(honest()["folder"] / "heads", folder)  # type: ignore[operator]
    _edit_plan(folder, lambda plan: plan["declared"]["attributes"].pop("heads"))
    with pytest.raises(CheckpointError, match=r"declared\.attributes\.heads: missing; expected 2"):
        pdprune.load_shrunk(folder, HeadNet)


def test_example_inputs_are_one_example_and_capped(tmp_path):
    pruner = shrunk("conv")
    pdprune.save_shrunk(pruner, tmp_path / "m")
    plan = json.loads((tmp_path / "m" / "plan.json").read_text())
    assert plan["example_inputs"]["tensor"] == [1, 3, 6, 6]  # traced with a batch of 2, stored as 1
    _edit_plan(tmp_path / "m", lambda p: p["example_inputs"].__setitem__("tensor", [16, 3, 1024, 1024]))
    with pytest.raises(CheckpointError, match="example_inputs: 50331648 elements; expected at most"):
        pdprune.load_shrunk(tmp_path / "m", ConvNet)
    with pytest.raises(ValueError, match="pass smaller ones"):
        pdprune.save_shrunk(pruner, tmp_path / "big", example_inputs=torch.zeros(1, 3, 2048, 2048))


def _edit_description(path: Path, edit) -> None:
    header, rest = _header(path.read_bytes())
    description = json.loads(header["__metadata__"]["pdprune"])
    edit(description)
    text = canonical_json(description)
    header["__metadata__"].update(pdprune=text, sha256=text_digest(text))
    path.write_bytes(_with_header(header, rest))


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d["tensors"]["0.weight"].__setitem__("shape", [200_000_000]), "0.weight::mask"),
        (lambda d: d["tensors"]["0.weight"].__setitem__("shape", [10**6, 10**6]), "0.weight::mask"),
        (lambda d: d["tensors"]["0.weight"].__setitem__("shape", [64, 17]), "0.weight::mask"),
        (lambda d: d["tensors"]["0.weight"].__setitem__("encoding", "zstd"), "0.weight.encoding"),
        (lambda d: d["tensors"]["0.weight"].__setitem__("dtype", "float64"), "0.weight::values"),
        (lambda d: d["tensors"]["0.weight"].__setitem__("dtype", "object"), "0.weight.dtype"),
        (lambda d: d["tensors"]["0.bias"].__setitem__("shape", [32, 2]), "0.bias"),
        (lambda d: d["tensors"].pop("0.bias"), "names"),
    ],
)
def test_a_sparse_file_is_checked_before_anything_is_allocated(tmp_path, edit, field):
    path = tmp_path / "m.sparse.safetensors"
    shutil.copy(honest()["folder"] / "m.sparse.safetensors", path)  # type: ignore[operator]
    _edit_description(path, edit)
    with pytest.raises(CheckpointError) as error:
        load_sparse(path)
    assert error.value.field == field and error.value.path == str(path)


@pytest.mark.parametrize(
    "name", ["m.sparse.safetensors", "m.safetensors", "conv/model.safetensors", "conv/plan.json"]
)
def test_a_flipped_byte_in_the_data_is_an_error_naming_the_tensor(tmp_path, name):
    shutil.copytree(honest()["folder"], tmp_path / "c", ignore=shutil.ignore_patterns("heads"))  # type: ignore[arg-type]
    path = tmp_path / "c" / name
    raw = bytearray(path.read_bytes())
    if name.endswith("safetensors"):  # a byte in the middle of one tensor's data
        header, rest = _header(bytes(raw))
        victim = "0.weight::values" if "sparse" in name else ("c2.weight" if "conv" in name else "0.weight")
        start, stop = header[victim]["data_offsets"]
        position = len(raw) - len(rest) + (start + stop) // 2
        raw[position] ^= 0x10
    else:  # one digit of a recorded shape becomes another digit: still valid JSON
        position = raw.index(b'"shapes":')
        while not chr(raw[position]).isdigit():
            position += 1
        raw[position] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt") as error:
        if name.startswith("conv"):
            pdprune.load_shrunk(tmp_path / "c" / "conv", ConvNet)
        elif name == "m.safetensors":
            load_dense(pruned_mlp(seed=1), path)
        else:
            load_sparse(path)
    assert error.value.field == (victim if name.endswith("safetensors") else "checksum")
    if name == "m.sparse.safetensors":
        state = load_sparse(path, verify=False)  # the opt-out reads what is there
        assert not _same_state(state, honest()["model"].state_dict())  # type: ignore[union-attr]


def test_errors_name_the_file_and_field_for_broken_json_and_missing_fields(tmp_path):
    folder = tmp_path / "conv"
    shutil.copytree(honest()["folder"] / "conv", folder)  # type: ignore[operator]
    plan_path = folder / "plan.json"
    for text, field in [
        ("{" * 100_000, "json"),
        ("\xff\xfe", "json"),
        ('{"kind": "pdprune shrunk model", "format": 2}', "checksum"),
        ('"a string"', "kind"),
    ]:
        plan_path.write_bytes(text.encode("latin-1"))
        with pytest.raises(CheckpointError) as error:
            pdprune.load_shrunk(folder, ConvNet)
        assert error.value.field == field and str(plan_path) in str(error.value)
    shutil.rmtree(folder)
    shutil.copytree(honest()["folder"] / "conv", folder)  # type: ignore[operator]
    _edit_plan(folder, lambda plan: plan.pop("shapes"))
    with pytest.raises(CheckpointError, match="shapes: missing"):
        pdprune.load_shrunk(folder, ConvNet)


def test_weights_from_another_save_do_not_pass_with_an_old_plan(tmp_path):
    first, second = shrunk("conv", seed=0), shrunk("conv", seed=1)
    pdprune.save_shrunk(first, tmp_path / "a")
    pdprune.save_shrunk(second, tmp_path / "b")
    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not belong to this plan"):
        pdprune.load_shrunk(tmp_path / "a", ConvNet)


def test_load_dense_refuses_a_checkpoint_of_another_model_before_changing_anything(tmp_path):
    save_dense(pruned_mlp(), tmp_path / "m.safetensors")
    other = pruned_mlp(width=32)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"0.weight: shape \(64, 16\); expected \(32, 16\)"):
        load_dense(other, tmp_path / "m.safetensors")
    assert _same_state(other.state_dict(), before)


def test_a_checkpoint_of_the_first_sparse_format_still_loads_with_a_warning(tmp_path):
    from safetensors.torch import save_file

    weight = torch.tensor([0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0, 0.0, 0.0])
    keep = weight != 0
    packed = torch.from_numpy(__import__("numpy").packbits(keep.numpy()))
    entries = {
        "w": {"encoding": "bitmask", "shape": [10], "dtype": "float32"},
        "b": {"encoding": "dense", "shape": [2], "dtype": "float32"},
    }
    save_file(
        {"w::mask": packed, "w::values": weight[keep], "b": torch.ones(2)},
        str(tmp_path / "old.safetensors"),
        metadata={"format": "pdprune-sparse-1", "tensors": json.dumps(entries)},
    )
    with pytest.warns(UserWarning, match="without checksums"):
        state = load_sparse(tmp_path / "old.safetensors")
    assert torch.equal(state["w"], weight) and torch.equal(state["b"], torch.ones(2))


def test_checkpoint_error_is_a_value_error_and_pickles():
    import pickle

    error = CheckpointError("f.safetensors", "w::mask", "2 bytes", "3")
    assert isinstance(error, ValueError)
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) == "f.safetensors: w::mask: 2 bytes; expected 3"


# ------------------------------------------------------------------ atomic folders, stale files
def test_save_shrunk_keeps_other_files_and_replaces_the_model(tmp_path):
    folder = tmp_path / "m"
    pdprune.save_shrunk(shrunk("conv", seed=0), folder)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "extra").mkdir()
    (folder / "extra" / "notes.txt").write_text("mine")
    second = shrunk("conv", seed=1)
    pdprune.save_shrunk(second, folder)
    assert (folder / "tokenizer.json").read_text() == "{}" and (
        folder / "extra" / "notes.txt"
    ).read_text() == "mine"
    model = pdprune.load_shrunk(folder, ConvNet).eval()
    assert _same_state(model.state_dict(), second.model.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folder left


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_save_cleans_what_a_killed_save_left_and_a_load_finds_a_swapped_out_folder(tmp_path):
    from pdprune.io import _start_ticks

    dead, me = _dead_pid(), os.getpid()
    stale_file = tmp_path / f".m.safetensors.pdprune-{dead}-0-abcd1234.tmp"
    stale_file.write_bytes(b"x" * 1000)
    live_file = tmp_path / f".m.safetensors.pdprune-{me}-{_start_ticks(me)}-abcd1234.tmp"  # a running writer
    live_file.write_bytes(b"x")
    reused = tmp_path / f".m.safetensors.pdprune-{me}-{_start_ticks(me) + 7}-abcd1234.tmp"  # our pid, reused
    reused.mkdir()
    save_dense(pruned_mlp(), tmp_path / "m.safetensors")
    assert not stale_file.exists() and not reused.exists() and live_file.exists()

    pdprune.save_shrunk(shrunk("conv"), tmp_path / "s")
    # A save killed between its two renames: the old folder moved aside, the new one not in place.
    os.rename(tmp_path / "s", tmp_path / f".s.pdprune-old-{dead}-0-abcd1234")
    (tmp_path / f".s.pdprune-new-{dead}-0-beef0000").mkdir()  # a staging folder it never finished
    model = pdprune.load_shrunk(tmp_path / "s", ConvNet)
    assert _same_state(model.state_dict(), honest()["conv"].state_dict())  # type: ignore[union-attr]
    pdprune.save_shrunk(shrunk("conv", seed=1), tmp_path / "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.safetensors", live_file.name, "s"])


def test_saves_through_a_symlink_keep_the_link_and_load_through_it(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    pdprune.save_shrunk(shrunk("conv"), tmp_path / "link" / "model")
    os.symlink(tmp_path / "real" / "model", tmp_path / "model-link")
    pdprune.save_shrunk(shrunk("conv", seed=1), tmp_path / "model-link")
    assert (tmp_path / "model-link").is_symlink()
    model = pdprune.load_shrunk(tmp_path / "model-link", ConvNet)
    assert _same_state(model.state_dict(), shrunk("conv", seed=1).model.state_dict())
    save_dense(pruned_mlp(), tmp_path / "real" / "m.safetensors")
    os.symlink(tmp_path / "real" / "m.safetensors", tmp_path / "m-link.safetensors")
    save_dense(pruned_mlp(seed=3), tmp_path / "m-link.safetensors")
    assert (tmp_path / "m-link.safetensors").is_symlink()
    assert _same_state(
        load_dense(pruned_mlp(), tmp_path / "m-link.safetensors").state_dict(),
        pruned_mlp(seed=3).state_dict(),
    )


def test_files_written_into_the_folder_during_a_save_are_kept(tmp_path, monkeypatch):
    import pdprune.io as io

    folder = tmp_path / "m"
    pdprune.save_shrunk(shrunk("conv"), folder)
    real_rename = os.rename

    def rename(source, destination):
        if ".pdprune-ready-" in str(source):  # the old folder is aside; a training loop logs into it
            next(tmp_path.glob(".m.pdprune-old-*")).joinpath("events.log").write_text("step 9")
        real_rename(source, destination)

    monkeypatch.setattr(io.os, "rename", rename)
    pdprune.save_shrunk(shrunk("conv", seed=1), folder)
    assert (folder / "events.log").read_text() == "step 9"


# ------------------------------------------------------------------ memory while refusing
def _peak(kind: str, path: Path) -> dict:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "tests.load_peak", kind, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def _flip_in(path: Path, key: str) -> None:
    raw = bytearray(path.read_bytes())
    header, rest = _header(bytes(raw))
    start, stop = header[key]["data_offsets"]
    raw[len(raw) - len(rest) + (start + stop) // 2] ^= 0x40
    path.write_bytes(bytes(raw))


INTERPRETER_ALLOWANCE_KIB = 4096  # lazily imported modules and allocator slack, not the file


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory is read from Linux /proc")
def test_refusing_a_bad_file_takes_at_most_twice_the_honest_files_size(tmp_path):
    from tests.file_models import big_mlp

    model = big_mlp()
    save_sparse(model, tmp_path / "honest.sparse")
    save_dense(model, tmp_path / "honest.dense")
    pdprune.save_shrunk(shrunk("conv"), tmp_path / "honest.shrunk")
    bad: list[tuple[str, Path, str]] = []
    for name, edit in [
        ("huge", lambda d: d["tensors"]["0.weight"].__setitem__("shape", [200_000_000])),
        ("vast", lambda d: d["tensors"]["2.weight"].__setitem__("shape", [10**6, 10**6])),
        ("bigger", lambda d: d["tensors"]["2.weight"].__setitem__("shape", [2048, 4096])),
    ]:
        shutil.copy(tmp_path / "honest.sparse", tmp_path / name)
        _edit_description(tmp_path / name, edit)
        bad.append(("sparse", tmp_path / name, "honest.sparse"))
    for kind, key in [("sparse", "2.weight::values"), ("dense", "2.weight")]:
        path = tmp_path / f"flipped.{kind}"
        shutil.copy(tmp_path / f"honest.{kind}", path)
        _flip_in(path, key)
        bad.append((kind, path, f"honest.{kind}"))
    (tmp_path / "truncated.sparse").write_bytes((tmp_path / "honest.sparse").read_bytes()[:-1000])
    bad.append(("sparse", tmp_path / "truncated.sparse", "honest.sparse"))
    shutil.copytree(tmp_path / "honest.shrunk", tmp_path / "example.shrunk")
    _edit_plan(
        tmp_path / "example.shrunk", lambda p: p["example_inputs"].__setitem__("tensor", [16, 3, 1024, 1024])
    )
    bad.append(("shrunk", tmp_path / "example.shrunk", "honest.shrunk"))
    for kind, path, honest_name in bad:
        honest_path = tmp_path / honest_name
        size = (
            sum(p.stat().st_size for p in honest_path.iterdir())
            if honest_path.is_dir()
            else honest_path.stat().st_size
        )
        measured = _peak(kind, path)
        assert measured["outcome"] == "refused", path.name
        assert measured["peak_kib"] <= 2 * size / 1024 + INTERPRETER_ALLOWANCE_KIB, (
            path.name,
            measured,
            size,
        )


# ------------------------------------------------------------------ kill -9 at random points
def _loaded_state(kind: str, path: Path) -> dict[str, torch.Tensor]:
    from tests.file_models import big_mlp

    if kind == "sparse":
        return load_sparse(path)
    if kind == "dense":
        return load_dense(big_mlp(seed=2), path).state_dict()
    return pdprune.load_shrunk(path, ConvNet).state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sparse", "dense", "shrunk"])
def test_kill_9_during_a_save_leaves_the_old_or_the_new_version_whole(tmp_path, kind):
    import random
    import signal
    import subprocess
    import sys

    from tests.save_worker import versions

    def state_of(version) -> dict[str, torch.Tensor]:
        return (version.model if kind == "shrunk" else version).state_dict()

    expected = [state_of(v) for v in versions(kind)]
    draw = random.Random(f"kill-{kind}")
    root = Path(__file__).resolve().parent.parent
    target = tmp_path / ("model" if kind == "shrunk" else "model.safetensors")
    seen = set()
    for trial in range(20):
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.save_worker", kind, str(target)],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert worker.stdout.readline().strip() == "ready", worker.stderr.read()[-2000:]
        __import__("time").sleep(draw.uniform(0.0, 0.4))
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        state = _loaded_state(kind, target)
        match = [i for i, e in enumerate(expected) if _same_state(state, e)]
        assert match, f"trial {trial}: the file after kill -9 is neither version"
        seen.add(match[0])
    assert seen == {0, 1}  # the kills fell at different points of the loop
    from tests.file_models import save

    save(kind, versions(kind)[0], target)  # the next save cleans what the killed ones left
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_shrunk_folder_of_the_first_plan_format_still_loads_with_a_warning(tmp_path):
    from safetensors.torch import save_model

    reference = honest()["conv"]
    folder = tmp_path / "old"
    shutil.copytree(honest()["folder"] / "conv", folder)  # type: ignore[operator]
    plan = json.loads((folder / "plan.json").read_text())
    old = {k: v for k, v in plan.items() if k not in ("checksum", "weights")}
    old["format"], old["declared"] = 1, {"removals": [], "attributes": {}}
    (folder / "plan.json").write_text(json.dumps(old))
    save_model(reference, str(folder / "model.safetensors"))  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="plan format 1"):
        model = pdprune.load_shrunk(folder, ConvNet)
    assert _same_state(model.state_dict(), reference.state_dict())  # type: ignore[union-attr]
    old["declared"]["attributes"] = {"b1.eps": 3}  # the first format's plans are checked as data too
    (folder / "plan.json").write_text(json.dumps(old))
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="no int attribute 'eps'"):
        pdprune.load_shrunk(folder, ConvNet)


@cache
def _midway_state(method_name: str) -> str:
    method = GMP(refresh_every=2) if method_name == "gmp" else pdprune.PDP()
    model = mlp()
    pruner = pdprune.prepare(model, config(total=30, warmup=0, ramp=10, method=method))
    train_steps(model, pruner, torch.optim.SGD(model.parameters(), lr=0.05), 0, 5)
    return json.dumps(pruner.state_dict())


@pytest.mark.parametrize("method_name", ["pdp", "gmp"])
@FUZZ
@given(data=st.data())
def test_an_edited_pruner_state_is_refused_or_resumes_identically(method_name, data):
    saved = json.loads(_midway_state(method_name))
    edited = data.draw(json_edit(saved))
    method = GMP(refresh_every=2) if method_name == "gmp" else pdprune.PDP()
    pruner = pdprune.prepare(mlp(), config(total=30, warmup=0, ramp=10, method=method))
    try:
        pruner.load_state_dict(edited)
    except CheckpointError:
        assert pruner.step_count == 0
        return
    except ValueError as error:
        pytest.fail(f"refused with a plain ValueError, not CheckpointError: {error}")
    assert json.dumps(pruner.state_dict(), sort_keys=True) == json.dumps(saved, sort_keys=True)


def _one_byte(path: Path, old: bytes, new: bytes) -> None:
    raw = path.read_bytes()
    assert raw.count(old) >= 1 and len(old) == len(new)
    path.write_bytes(raw.replace(old, new, 1))


@pytest.mark.parametrize(
    "name, old, new",
    [
        ("m.safetensors", b'"F32"', b'"I32"'),  # a dense tensor's dtype code: same size, other values
        ("conv/model.safetensors", b'"I64"', b'"F64"'),
        ("m.sparse.safetensors", b'"pdprune-sparse-2"', b'"pdprune-sparse-1"'),  # a downgrade
        ("conv/plan.json", b'"format":2', b'"format":1'),
    ],
)
def test_one_damaged_byte_in_a_header_or_format_field_is_refused(tmp_path, name, old, new):
    shutil.copytree(honest()["folder"], tmp_path / "c", ignore=shutil.ignore_patterns("heads"))  # type: ignore[arg-type]
    _one_byte(tmp_path / "c" / name, old, new)
    with pytest.raises(CheckpointError):
        if name.startswith("conv"):
            pdprune.load_shrunk(tmp_path / "c" / "conv", ConvNet)
        elif name == "m.safetensors":
            load_dense(pruned_mlp(seed=1), tmp_path / "c" / name)
        else:
            load_sparse(tmp_path / "c" / name)
