"""README.md stays true: its set-up lines match CI, and every ```python block runs.

The python blocks run in order in one namespace (as a reader would paste them into
one session), in a temporary working directory.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
VENV = "python3 -m venv .venv && . .venv/bin/activate && "


def ci_test_command() -> str:
    """``TEST_CMD`` as .ci/run defines it (the command each CI stack runs)."""
    match = re.search(r"^TEST_CMD=(.+)$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)
    assert match, ".ci/run defines no TEST_CMD"
    (command,) = shlex.split(match.group(1))  # undo the shell quoting
    return command


def test_first_lines_are_the_setup_commands():
    lines = README.splitlines()[:6]
    main_job = VENV + "pip install -e '.[examples]' && python examples/train_digits.py"
    tests = VENV + ci_test_command()
    assert main_job in lines and tests in lines, (
        f"README's first lines must hold, in this order:\n{main_job}\n{tests}\ngot:\n"
        + "\n".join(lines)
    )
    assert lines.index(main_job) + 1 == lines.index(tests)
    assert (ROOT / "examples" / "train_digits.py").is_file()


def test_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"^```python\n(.*?)^```", README, re.DOTALL | re.MULTILINE)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"README python block {i} failed:\n{block}") from e
