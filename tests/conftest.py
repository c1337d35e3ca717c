"""Shared fixtures: the real embedded model (loaded once per session), the reference data folder, tiny models.

Tests that read the reference data sets (../shared/data, or $DEPTHSTUDY_DATA) carry `@pytest.mark.needs_data` or use
the `data_dir` fixture: without the folder they are skipped, naming it; with the environment variable CI set, a
missing folder fails them instead (CI must run them)."""
import os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DEPTHSTUDY_DATA", str((ROOT / ".." / "shared" / "data").resolve()))
os.environ.setdefault("MPLBACKEND", "Agg")
DATA = Path(os.environ["DEPTHSTUDY_DATA"])


def _data_missing() -> str | None:
    need = [DATA / "seed000", DATA / "gsm8k"]
    if all(p.is_dir() for p in need): return None
    return (f"the reference data folder {DATA} is missing (or lacks seed000/, gsm8k/): set DEPTHSTUDY_DATA to a "
            "copy of shared/data to run this test")


def _skip_or_fail(why):
    if os.environ.get("CI"): pytest.fail(f"{why}; CI is set, so this test must run", pytrace=False)
    pytest.skip(why)


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_data: reads the reference data sets (skipped without them, failed in CI)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_data") and _data_missing(): _skip_or_fail(_data_missing())


@pytest.fixture(autouse=True)
def _own_activation_store(tmp_path, monkeypatch):
    """Every test gets an empty activation store (subprocesses too, through the environment): no test reads what
    another computed, and comparisons (engines, local against remote) compare computations, not cache hits.
    Prepared models stay in the shared cache."""
    monkeypatch.setenv("DEPTHSTUDY_ACTS", str(tmp_path / "acts"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if _data_missing(): _skip_or_fail(_data_missing())
    return DATA


@pytest.fixture(scope="session")
def embedded():
    from depthstudy.models import load_model
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def byte_tokenizer():
    """Factory for a fast byte-level tokenizer with BOS and character offsets: `byte_tokenizer(merges=())`;
    BPE `merges` such as `[("t", "h")]` tokenise the same text differently (for cross-tokenizer tests)."""
    from depthstudy.models import tiny_tokenizer
    return lambda merges=(): tiny_tokenizer("bytes", merges)


@pytest.fixture(scope="session")
def tiny_llama(byte_tokenizer):
    """Factory for a tiny random-init Llama `Model` over `byte_tokenizer` (any text works, no weights needed):
    `tiny_llama(n_layers=4, hidden=64, seed=0, tok=None, remote=False, name="tiny")`."""
    from depthstudy.models import tiny_model

    def make(n_layers=4, hidden=64, seed=0, tok=None, remote=False, name="tiny"):
        return tiny_model("llama", n_layers=n_layers, d=hidden, seed=seed, remote=remote, tokenizer=tok or byte_tokenizer(),
                          vocab_size=1000, max_positions=512, name=name)
    return make
