"""Shared fixtures: the parity vectors (copied from ../shared/parity, made by running the authors' code)."""
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
PARITY_FILES = sorted(p.name for p in DATA.glob("*.pt"))


def load_parity(name: str) -> dict:
    return torch.load(DATA / name, weights_only=True)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
