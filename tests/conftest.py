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
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, processors
    from transformers import PreTrainedTokenizerFast

    def make(merges=()):
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        vocab = {"<s>": 0, "</s>": 1, "<pad>": 2, **{ch: i + 3 for i, ch in enumerate(alphabet)}}
        for a, b in merges: vocab.setdefault(a + b, len(vocab))
        tk = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
        return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    return make


@pytest.fixture(scope="session")
def tiny_llama(byte_tokenizer):
    """Factory for a tiny random-init Llama `Model` over `byte_tokenizer` (any text works, no weights needed):
    `tiny_llama(n_layers=4, hidden=64, seed=0, tok=None, remote=False, name="tiny")`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from depthstudy.models import Model

    def make(n_layers=4, hidden=64, seed=0, tok=None, remote=False, name="tiny"):
        torch.manual_seed(seed)
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
                          num_attention_heads=4, num_key_value_heads=4, vocab_size=1000, max_position_embeddings=512)
        return Model.from_hf(LlamaForCausalLM(cfg).eval(), tok or byte_tokenizer(), name=name, remote=remote)
    return make
