"""A ``Checkpointer`` checks its directory when it is built, not at the first save.

README.md, "Checkpoint and resume": a local directory is created (``create=True``)
and a probe file is written into it and removed; a directory that cannot be created
or written is refused at construction with one line that names it and says what to
do. (The ``gs://`` checks run on the GCS emulator: tests/test_checkpoint_gcs.py.)

The tests run as root, where permission bits stop no write: the read-only cases use
what stops root too -- a path through a regular file, a kernel file system (sysfs)
and, in a private mount namespace, a read-only tmpfs and a read-only bind mount of
an existing checkpoint.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flax import nnx

import nnx_momentum as nm
from nnx_momentum.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[1]


def test_a_new_directory_is_created_and_the_probe_removed(tmp_path):
    root = tmp_path / "runs" / "a"
    with Checkpointer(root) as ckpt:
        assert root.is_dir() and list(root.iterdir()) == []
        assert ckpt.all_steps() == []


def test_a_path_through_a_regular_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(PermissionError, match=r"cannot create '.*file/ckpt' \(NotADirectory"):
        Checkpointer(tmp_path / "file" / "ckpt")


def test_a_directory_the_kernel_refuses_is_refused():
    root = Path("/sys/kernel/nnx-momentum-ckpt")
    try:
        root.mkdir()
    except OSError:
        pass
    else:
        root.rmdir()
        pytest.skip("/sys/kernel is writable here")
    with pytest.raises(PermissionError, match=r"cannot create '/sys/kernel/nnx-momentum-ckpt'"):
        Checkpointer(root)


CHILD = """
import sys
import nnx_momentum as nm
for root in sys.argv[1:]:
    try:
        nm.Checkpointer(root).close()
        print("constructed", root)
    except Exception as e:
        print(f"{type(e).__name__}: {e}")
"""


def _in_private_mounts(script: str, *roots: Path) -> subprocess.CompletedProcess[str]:
    """Runs ``script`` (sh) in a new mount namespace, then CHILD on ``roots`` there."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    command = f'{script} && exec "$0" -c "$1" "${{@:2}}"'
    return subprocess.run(
        ["unshare", "--mount", "bash", "-c", command, sys.executable, CHILD, *map(str, roots)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # a subprocess in a new mount namespace
def test_read_only_mounts_are_refused_at_construction(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    empty, saved, saved_ro = tmp_path / "ro", tmp_path / "saved", tmp_path / "saved_ro"
    empty.mkdir()
    saved_ro.mkdir()
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with Checkpointer(saved) as ckpt:
        ckpt.save(1, model, nm.MomentumOptimizer(model, lr=0.1))
    probe = _in_private_mounts(f"mount -t tmpfs -o ro tmpfs {empty}")
    if probe.returncode != 0:
        pytest.skip(f"cannot mount here: {probe.stderr.strip()}")
    mounts = (
        f"mount -t tmpfs -o ro tmpfs {empty} && mount --bind {saved} {saved_ro} && "
        f"mount -o remount,bind,ro {saved_ro}"
    )
    out = _in_private_mounts(mounts, empty, empty / "sub", saved_ro, saved)
    assert out.returncode == 0, out.stderr[-4000:]
    lines = out.stdout.strip().splitlines()
    assert lines == [
        f"PermissionError: Checkpointer: '{empty}' is not writable (OSError: Read-only file "
        "system); pass a directory you can write, or make this one writable (permissions, a "
        "read-write mount).",
        f"PermissionError: Checkpointer: cannot create '{empty / 'sub'}' (OSError: Read-only "
        "file system); pass a directory you can write.",
        f"PermissionError: Checkpointer: '{saved_ro}' is not writable (OSError: Read-only file "
        "system); pass a directory you can write, or make this one writable (permissions, a "
        "read-write mount).",
        f"constructed {saved}",  # the same checkpoint, mounted read-write
    ], out.stdout
    assert sorted(p.name for p in saved.iterdir()) == ["1"]
