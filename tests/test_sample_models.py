"""The checked-in sample models match their description and rebuild byte for byte."""

from __future__ import annotations

import subprocess
import sys

from conftest import SAMPLES

from surgeon.loading import load

sys.path.insert(0, str(SAMPLES))
import build  # noqa: E402


def test_rebuild_is_identical():
    res = subprocess.run(
        [sys.executable, str(SAMPLES / "build.py"), "--check"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_models_match_their_table():
    for name, expected in build.MODELS.items():
        m = load(SAMPLES / name)
        assert (SAMPLES / name).stat().st_size < 1_000_000
        inputs = {i.name: (i.dtype, i.shape) for i in m.inputs}
        outputs = {o.name: (o.dtype, o.shape) for o in m.outputs}
        assert inputs == expected["inputs"], name
        assert outputs == expected["outputs"], name
        if "nodes" in expected:
            assert m.node_names() == expected["nodes"]
        assert m.external_data_files == expected.get("external_data", [])
