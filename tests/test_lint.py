"""The code passes the project's ruff configuration (pyproject.toml), so style debt cannot land unseen."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_repository_passes_ruff():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    # ruff comes with the test extra (pip install -e ".[test]"); without it this fails with "No module named ruff".
    assert result.returncode == 0, (f"ruff check . found problems (ruff check --fix . mends most):\n"
                                    f"{result.stdout}{result.stderr}")
