"""The README's main job, end to end, with its default settings."""

import importlib.util
import pathlib

import pytest

QUICKSTART = pathlib.Path(__file__).parents[1] / "examples" / "quickstart.py"


@pytest.mark.slow
def test_quickstart_trains_saves_reloads_and_plots(tmp_path):
    spec = importlib.util.spec_from_file_location("quickstart", QUICKSTART)
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    code = quickstart.main(["--out-dir", str(tmp_path)])
    assert code == 0  # accuracy >= 0.95 and identical reloaded predictions
    assert (tmp_path / "a_before_b.keras").stat().st_size > 0
    assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG"
