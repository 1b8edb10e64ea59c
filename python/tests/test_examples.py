"""The README's example runs as printed."""

import runpy
from pathlib import Path


def test_quickstart_runs(capsys):
    runpy.run_path(str(Path(__file__).parent.parent / "examples" / "quickstart.py"), run_name="__main__")
    assert "at position 10" in capsys.readouterr().out
