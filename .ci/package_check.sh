#!/usr/bin/env bash
# Package check: is what we would publish complete and installable?
#
#   bash .ci/package_check.sh                  # with python3
#   PYTHON=python3.12 bash .ci/package_check.sh
#
# Needs only a Python (>= 3.11, with its venv module) and PyPI; it leaves nothing behind
# (all in a temporary directory) and never touches the repository's own files.
#  1. builds the sdist and the wheel with `python -m build` (from the sdist, so the sdist
#     alone must be able to build), in a build-only venv;
#  2. checks the sdist holds what the test suite needs (tests/ with tests/data, examples/,
#     notebooks/, benchmarks/, README, CHANGELOG, LICENSE, .ci/run), and the metadata
#     (SPDX license, license file, numpy declared, project URLs); `twine check` both files;
#  3. installs the wheel into a fresh venv through the notebook's own install cell (its
#     PIP_SPEC set to the wheel: what a Colab user does with an uploaded wheel);
#  4. from outside the repository, imports the installed package and checks that
#     nnx_momentum.__version__ equals the installed metadata's version (one source);
#  5. runs a test that reads tests/data from the unpacked sdist against the installed wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PYTHON="${PYTHON:-python3}"

fail() {
  echo "package_check: FAILED: $*" >&2
  exit 1
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "=== package check with $("$PYTHON" --version 2>&1), in $tmp"

# 1. Build: a venv with `build` (and twine), then sdist + wheel (the wheel built from the sdist).
"$PYTHON" -m venv "$tmp/build-venv" || fail "$PYTHON -m venv (is the venv module installed?)"
BUILD_PY="$tmp/build-venv/bin/python"
"$BUILD_PY" -m pip install -q --upgrade pip
"$BUILD_PY" -m pip install -q build twine
# Build from a copy of the files git tracks or would track (not ignored, not deleted), so
# local venvs, caches and build outputs never leak into the sdist, and nothing is written
# into the checkout. Without git (an unpacked sdist, say), copy everything.
"$BUILD_PY" - "$ROOT" "$tmp/src" <<'EOF' || fail "copying the sources"
import os, shutil, subprocess, sys

root, dest = sys.argv[1:]
try:
    out = subprocess.run(
        ["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout
except (OSError, subprocess.CalledProcessError):
    shutil.copytree(root, dest)
    sys.exit()
for path in out.decode().split("\0"):
    if path and os.path.isfile(os.path.join(root, path)):
        os.makedirs(os.path.dirname(os.path.join(dest, path)), exist_ok=True)
        shutil.copy2(os.path.join(root, path), os.path.join(dest, path))
EOF
"$BUILD_PY" -m build --outdir "$tmp/dist" "$tmp/src" >"$tmp/build.log" 2>&1 \
  || { tail -40 "$tmp/build.log"; fail "python -m build"; }
# setuptools' deprecations (e.g. a `license` table instead of an SPDX string) fail the check.
if grep -E "Deprecat|SetuptoolsWarning|InformationOnly" "$tmp/build.log" >"$tmp/warnings"; then
  cat "$tmp/warnings"
  fail "setuptools warned about the package's configuration (above)"
fi
SDIST="$(ls "$tmp"/dist/*.tar.gz)"
WHEEL="$(ls "$tmp"/dist/*.whl)"
echo "built $(basename "$SDIST") and $(basename "$WHEEL")"
"$tmp/build-venv/bin/twine" check --strict "$SDIST" "$WHEEL" || fail "twine check"

# 2. What the sdist and the wheel hold.
"$BUILD_PY" - "$SDIST" "$WHEEL" <<'EOF' || fail "archive contents"
import sys, tarfile, zipfile
from email.parser import Parser

sdist, wheel = sys.argv[1:]
with tarfile.open(sdist) as tar:
    names = tar.getnames()
top = names[0].split("/")[0]
files = {n.removeprefix(top + "/") for n in names}
need = [
    "LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "MANIFEST.in", ".ci/run",
    "nnx_momentum/__init__.py", "nnx_momentum/_version.py", "nnx_momentum/py.typed",
    "tests/conftest.py", "tests/test_examples.py", "tests/data/ckpt_v0_1_expected.npz",
    "examples/train_digits.py", "examples/braintools_style.py", "examples/sharded_resume.py",
    "notebooks/quickstart.ipynb", "benchmarks/run.py",
]
missing = [n for n in need if n not in files]
assert not missing, f"the sdist lacks {missing}"
assert any(f.startswith("tests/data/ckpt_v0_1/") for f in files), "the sdist lacks tests/data/ckpt_v0_1/"
junk = [f for f in files if "__pycache__" in f or f.endswith(".pyc") or "egg-info/" in f and not f.startswith("nnx_momentum.egg-info/")]
assert not junk, f"the sdist holds build junk: {junk[:5]}"
print(f"sdist: {len(files)} files, with examples/, notebooks/, benchmarks/, tests/ and tests/data/")

with zipfile.ZipFile(wheel) as whl:
    wnames = whl.namelist()
    meta_name = next(n for n in wnames if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(whl.read(meta_name).decode())
for sub in ("nnx_momentum/checkpoint/__init__.py", "nnx_momentum/schedulers/__init__.py",
            "nnx_momentum/py.typed"):
    assert sub in wnames, f"the wheel lacks {sub}"
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wnames), "the wheel lacks LICENSE"
assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in wnames), "the wheel ships non-package files"
assert meta["License-Expression"] == "Apache-2.0", meta["License-Expression"]
requires = [  # the runtime dependencies, not the extras'
    r.replace(" ", "") for r in meta.get_all("Requires-Dist") if "extra" not in r
]
for dist in ("jax", "flax", "optax", "orbax-checkpoint", "numpy"):
    assert any(r.startswith(dist + ">") or r.startswith(dist + "=") or r == dist for r in requires), f"{dist} is not declared"
urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
assert {"Homepage", "Repository", "Issues", "Changelog"} <= set(urls), urls
print(f"wheel: {meta['Name']} {meta['Version']}, License-Expression {meta['License-Expression']},"
      f" requires {', '.join(requires)}")
EOF

# 3. A fresh venv; the notebook's install cell installs the wheel (PIP_SPEC = its path).
"$PYTHON" -m venv "$tmp/venv"
VENV_PY="$tmp/venv/bin/python"
"$VENV_PY" -m pip install -q --upgrade pip
mkdir "$tmp/elsewhere"
cd "$tmp/elsewhere" # outside the repository: `import nnx_momentum` must find the installed one
"$VENV_PY" - "$ROOT/notebooks/quickstart.ipynb" "$WHEEL" <<'EOF' || fail "the notebook's install cell"
import json, re, sys

notebook, wheel = sys.argv[1:]
cells = [c for c in json.load(open(notebook))["cells"] if c["cell_type"] == "code"]
install = "".join(cells[0]["source"])
assert "PIP_SPEC" in install, "the notebook's first code cell is not the install cell"
install, n = re.subn(r'^PIP_SPEC = .*$', f"PIP_SPEC = {wheel!r}", install, count=1, flags=re.M)
assert n == 1, "no PIP_SPEC = ... line in the install cell"
exec(compile(install, "quickstart.ipynb install cell", "exec"), {})
EOF

# 4. Import from outside the repository; one version everywhere.
"$VENV_PY" - "$ROOT" "$WHEEL" <<'EOF' || fail "the installed package"
import importlib.metadata, os, sys

root, wheel = sys.argv[1:]
import nnx_momentum

where = os.path.realpath(nnx_momentum.__file__)
assert not where.startswith(os.path.realpath(root) + os.sep), f"imported the checkout: {where}"
assert where.startswith(os.path.realpath(sys.prefix)), f"not the venv's copy: {where}"
installed = importlib.metadata.version("nnx-momentum")
assert nnx_momentum.__version__ == installed, (nnx_momentum.__version__, installed)
assert os.path.basename(wheel).startswith(f"nnx_momentum-{installed}-"), (wheel, installed)
import nnx_momentum.checkpoint, nnx_momentum.schedulers  # noqa: E401 (the subpackages)
print(f"import nnx_momentum from {where}: __version__ {nnx_momentum.__version__} == metadata {installed}")
EOF

# 5. The unpacked sdist runs its tests against the installed wheel: the checkpoint fixture
#    written by 0.1.0 (tests/data) restores into the installed package.
mkdir "$tmp/sdist"
tar -xzf "$SDIST" -C "$tmp/sdist"
SDIST_DIR="$(ls -d "$tmp"/sdist/*/)"
"$VENV_PY" -m pip install -q pytest
(
  cd "$SDIST_DIR"
  rm -rf nnx_momentum # so the tests can only import the installed wheel
  JAX_PLATFORMS=cpu "$VENV_PY" -m pytest -q -p no:cacheprovider tests/test_checkpoint_compat.py
) || fail "tests from the sdist against the installed wheel"

echo "package_check: OK ($(basename "$SDIST"), $(basename "$WHEEL"))"
