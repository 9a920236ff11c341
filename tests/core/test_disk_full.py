"""A disk that fills while writing.

Writing fails with ENOSPC part-way: in the model file, in its external-data
file, in the final rename, in a later output (report, masked model). Every
case must end in one line ``onnxprune: cannot write OUT: No space left on
device``, exit code 2 (the environment, not the input or a bug), nothing left
behind (no output, no data file, no ``.onnxprune-*`` temporary folder) and
the input unchanged. ``FullDisk`` fakes the disk at the level of Python's
``open``/``os.fdopen`` (whatever writes the files, onnx or our own code); the
last test uses a real 64 KiB tmpfs where mounting is allowed.
"""
from __future__ import annotations

import builtins
import errno
import hashlib
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main
from onnxprune.core.errors import OnnxPruneError
from tests.helpers import fixtures_cli as F

ENOSPC_TEXT = "No space left on device"


class _Limited:
    """A writable file object that shares its disk's free bytes."""

    def __init__(self, f, disk: FullDisk, path: str):
        self._f, self._disk, self._path = f, disk, path

    def write(self, data):
        size = len(data.encode() if isinstance(data, str) else data)
        self._disk.touched.append(self._path)
        if size <= self._disk.free:
            self._disk.free -= size
            return self._f.write(data)
        part = data[: self._disk.free]
        if part:
            self._f.write(part)
            self._f.flush()
        self._disk.free = 0
        self._disk.failed.append(self._path)
        raise OSError(errno.ENOSPC, ENOSPC_TEXT)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __enter__(self):
        self._f.__enter__()
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __iter__(self):
        return iter(self._f)

    def __getattr__(self, name):
        return getattr(self._f, name)


def _writes(mode: str) -> bool:
    return any(c in mode for c in "wax+")


class FullDisk:
    """Files opened for writing under ``folder`` (and matching ``match``) share
    ``free`` bytes; the write that passes it writes what still fits, then
    raises OSError(ENOSPC)."""

    def __init__(self, folder, free: int, match=lambda path: True):
        self.folder = os.path.realpath(folder)
        self.free = free
        self.match = match
        self.touched: list[str] = []
        self.failed: list[str] = []

    def _ours(self, path) -> bool:
        path = os.path.realpath(os.fspath(path))
        return path.startswith(self.folder + os.sep) and self.match(path)

    def install(self, monkeypatch) -> FullDisk:
        real_open, real_fdopen = builtins.open, os.fdopen

        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, bytes, os.PathLike)) and _writes(mode) and self._ours(file):
                return _Limited(f, self, os.fspath(file))
            return f

        def fake_fdopen(fd, mode="r", *args, **kwargs):
            f = real_fdopen(fd, mode, *args, **kwargs)
            if _writes(mode):
                try:
                    path = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    return f
                if self._ours(path):
                    return _Limited(f, self, path)
            return f

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "fdopen", fake_fdopen)
        return self


def digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree(folder) -> dict[str, str | None]:
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = None
        for f in files:
            out[os.path.relpath(os.path.join(root, f), folder)] = digest(os.path.join(root, f))
    return out


def assert_disk_full_error(result, out) -> None:
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()
             and not line.startswith("onnxprune: warning:")]
    assert lines == [f"onnxprune: cannot write {out}: {ENOSPC_TEXT}"], result.stderr


@pytest.fixture
def inputs(tmp_path):
    """An input folder (model + data) apart from the output folder."""
    src = tmp_path / "in"
    src.mkdir()
    model = F.save(F.classifier(), src)
    external = F.save_external(F.classifier(c1=16, c2=32), src, "ext.onnx", location="ext.bin")
    data = F.save_data(src)
    dst = tmp_path / "out"
    dst.mkdir()
    return src, dst, model, external, data


def run_full(inputs, monkeypatch, disk_kwargs, args, model_key="model", out_name="o.onnx"):
    src, dst, model, external, data = inputs
    model_path = {"model": model, "external": external}[model_key]
    out = dst / out_name
    before_in, before_out = tree(src), tree(dst)
    disk = FullDisk(dst, **disk_kwargs).install(monkeypatch)
    result = CliRunner().invoke(main, ["prune", model_path, "-o", os.fspath(out),
                                       *[a.format(dst=dst, data=data) for a in args]])
    monkeypatch.undo()
    assert_disk_full_error(result, out)
    assert tree(src) == before_in, "an input file changed"
    assert tree(dst) == before_out, "something was left behind"
    return disk, out


def test_model_file_write_fails_part_way(inputs, monkeypatch):
    disk, _ = run_full(inputs, monkeypatch, {"free": 700}, ["--no-validate"])
    assert disk.failed and disk.failed[0].endswith("o.onnx"), disk.failed
    assert ".onnxprune-" in disk.failed[0]  # it failed in the temporary folder, which is gone


def test_model_file_write_fails_part_way_after_validation(inputs, monkeypatch):
    disk, _ = run_full(inputs, monkeypatch, {"free": 1500}, ["--data", "{data}"])
    assert disk.failed


def test_external_data_file_write_fails(inputs, monkeypatch):
    disk, _ = run_full(inputs, monkeypatch, {"free": 2000, "match": lambda p: p.endswith(".data")},
                       ["--no-validate"], model_key="external")
    assert disk.failed and disk.failed[0].endswith("o.onnx.data"), disk.failed


def test_model_file_fails_after_its_external_data_was_written(inputs, monkeypatch):
    disk, _ = run_full(inputs, monkeypatch, {"free": 100, "match": lambda p: p.endswith(".onnx")},
                       ["--no-validate"], model_key="external")
    assert disk.failed and disk.failed[0].endswith("o.onnx")


@pytest.mark.parametrize("model_key", ["model", "external"])
def test_final_rename_fails(inputs, monkeypatch, model_key):
    """os.replace of the model into place fails (after its data file moved in)."""
    src, dst, model, external, _ = inputs
    out = dst / "o.onnx"
    real_replace = os.replace
    calls = []

    def replace(a, b, *args, **kwargs):
        calls.append(os.fspath(b))
        if os.path.realpath(b) == os.path.realpath(out):
            raise OSError(errno.ENOSPC, ENOSPC_TEXT)
        return real_replace(a, b, *args, **kwargs)

    before_in, before_out = tree(src), tree(dst)
    monkeypatch.setattr(os, "replace", replace)
    result = CliRunner().invoke(main, ["prune", model if model_key == "model" else external,
                                       "-o", os.fspath(out), "--no-validate"])
    monkeypatch.undo()
    assert_disk_full_error(result, out)
    assert tree(src) == before_in and tree(dst) == before_out
    if model_key == "external":
        assert calls[0].endswith("o.onnx.data")  # the data file had moved in: it was removed again


@pytest.mark.parametrize("which", ["report", "save_plan", "masked"])
def test_a_later_output_failing_removes_the_earlier_ones(inputs, monkeypatch, which):
    src, dst, model, _, _ = inputs
    names = {"report": "r.json", "save_plan": "p.json", "masked": "m.onnx"}
    failing = dst / names[which]
    before_in, before_out = tree(src), tree(dst)
    FullDisk(dst, free=0, match=lambda p: os.path.basename(p).startswith(names[which])
             or os.path.basename(p).startswith(f"{names[which]}.tmp")).install(monkeypatch)
    result = CliRunner().invoke(main, ["prune", model, "-o", os.fspath(dst / "o.onnx"), "--no-validate",
                                       "--report", os.fspath(dst / "r.json"),
                                       "--save-plan", os.fspath(dst / "p.json"),
                                       "--masked-output", os.fspath(dst / "m.onnx")])
    monkeypatch.undo()
    assert_disk_full_error(result, failing)
    assert tree(src) == before_in and tree(dst) == before_out


def test_validate_report_on_a_full_disk(inputs, monkeypatch):
    src, dst, model, _, data = inputs
    report = dst / "v.json"
    before_in, before_out = tree(src), tree(dst)
    FullDisk(dst, free=10).install(monkeypatch)
    result = CliRunner().invoke(main, ["validate", model, model, "--data", data, "--report", os.fspath(report)])
    monkeypatch.undo()
    assert_disk_full_error(result, report)
    assert tree(src) == before_in and tree(dst) == before_out


def test_api_save_on_a_full_disk_raises_a_user_error(inputs, monkeypatch):
    src, dst, model, _, _ = inputs
    result = onnxprune.prune(model, ratio=0.5)
    FullDisk(dst, free=300).install(monkeypatch)
    with pytest.raises(OnnxPruneError, match=f"cannot write .*o.onnx: {ENOSPC_TEXT}") as info:
        result.save(dst / "o.onnx")
    monkeypatch.undo()
    assert info.value.exit_code == 2
    assert os.listdir(dst) == []


# -- a real full disk -----------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (needs the right to mount; skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if sys.platform != "linux":
        pytest.skip("tmpfs: Linux only")
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", os.fspath(mnt)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs: {e}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", os.fspath(mnt)], capture_output=True, timeout=30)


@pytest.mark.parametrize("external", [False, True])
def test_a_real_full_disk(tmp_path, small_disk, external):
    src = tmp_path / "in"
    src.mkdir()
    big = F.classifier(c1=64, c2=128)  # ~300 KB of weights; ~150 KB once pruned: over 64 KiB
    model = (F.save_external(big, src, "m.onnx", location="m.bin") if external else F.save(big, src, "m.onnx"))
    out = small_disk / "o.onnx"
    before = tree(src)
    proc = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", model, "-o", os.fspath(out),
                           "--no-validate"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"onnxprune: cannot write {out}: {ENOSPC_TEXT}"]
    assert os.listdir(small_disk) == []
    assert tree(src) == before
