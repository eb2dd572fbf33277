"""The README's main job, end to end, with its default settings."""

import pytest


@pytest.mark.slow
def test_quickstart_trains_saves_reloads_and_plots(quickstart_run):
    code, out_dir = quickstart_run
    assert code == 0  # accuracy >= 0.95 and identical reloaded predictions
    assert (out_dir / "a_before_b.keras").stat().st_size > 0
    assert (out_dir / "attention.png").read_bytes()[:4] == b"\x89PNG"
