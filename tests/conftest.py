"Shared fixtures: the real embedded model (loaded once per session) and the data folder."
import os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DEPTHSTUDY_DATA", str((ROOT / ".." / "shared" / "data").resolve()))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = Path(os.environ["DEPTHSTUDY_DATA"])
    if not d.exists():
        pytest.fail(f"test data folder {d} is missing: set DEPTHSTUDY_DATA to the shared/data folder")
    return d


@pytest.fixture(scope="session")
def embedded():
    from depthstudy.models import load_model
    return load_model("smollm2-135m")
