"""The tiny model as a checkpoint, saved once per session for every test under tests/export.

Its export lands in the session's export cache (tests/conftest.py), so the one slow step, the
real ONNX export of the tiny model, runs once whichever test file asks first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from models.checkpoint import save_checkpoint
from models.pmmtalk import PMMTalk


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model: PMMTalk, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("tiny-checkpoint"))
