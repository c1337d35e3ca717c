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
