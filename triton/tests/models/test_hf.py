"""HF compatibility (only where transformers is installed): save/load round trip and generate with the cache."""
import pytest
import torch

pytest.importorskip("transformers")

from mdn.models import build_model  # noqa: E402
from mdn.models.hf import MDNForCausalLM  # noqa: E402


@pytest.mark.parametrize("extra", [{}, {"attn_layers": [1], "attn_num_heads": 2, "tie_embeddings": True}])
def test_save_load_and_generate_with_the_state_cache(tmp_path, extra):
    core = build_model(dict(vocab_size=61, hidden_size=32, num_layers=2, num_heads=2, head_dim=16, **extra), seed=0)
    hf = MDNForCausalLM.from_core(core)
    hf.save_pretrained(tmp_path)
    back = MDNForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 61, (2, 5))
    torch.testing.assert_close(back(ids).logits, core(ids))
    out = back.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, core.generate(ids, max_new_tokens=6))
    loss = back(ids, labels=ids).loss
    assert torch.isfinite(loss)
