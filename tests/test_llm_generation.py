"""The TempNet logits processor divides each step's logits by the tau TempNet predicts from them."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessorList

from clipdro.llm.generation import TempNetLogitsProcessor, generate
from clipdro.llm.tokenizer import ByteTokenizer
from clipdro.tempnet import LMTempNet

VOCAB = ByteTokenizer.vocab_size


@pytest.fixture(scope="module")
def tiny_lm() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=2, n_positions=64,
                        bos_token_id=256, eos_token_id=256, pad_token_id=256)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def tempnet() -> LMTempNet:
    torch.manual_seed(1)
    return LMTempNet(VOCAB, hidden=16, tau_min=0.2, tau_max=3.0).eval()


def test_processor_divides_each_row_by_its_own_tau(tempnet):
    torch.manual_seed(2)
    scores = 4 * torch.randn(3, VOCAB)
    processor = TempNetLogitsProcessor(tempnet, record=True)
    processed = processor(torch.zeros(3, 1, dtype=torch.long), scores.clone())
    for row in range(3):  # one row at a time: no batch effects
        tau = tempnet(torch.nn.functional.normalize(scores[row:row + 1], dim=-1))
        torch.testing.assert_close(processed[row], scores[row] / tau[0])
        torch.testing.assert_close(processor.taus[0][row], tau[0])
    assert processor.taus[0].unique().numel() == 3, "rows with different logits should get different taus"


def test_masked_entries_stay_masked_and_feed_tempnet_the_row_minimum(tempnet):
    torch.manual_seed(3)
    scores = 4 * torch.randn(2, VOCAB)
    masked = scores.clone()
    masked[0, :5] = -torch.inf  # e.g. a min-length or bad-words processor ran first
    processed = TempNetLogitsProcessor(tempnet)(torch.zeros(2, 1, dtype=torch.long), masked)
    assert torch.isneginf(processed[0, :5]).all() and torch.isfinite(processed[0, 5:]).all()
    filled = scores.clone()
    filled[0, :5] = scores[0, 5:].min()
    tau = tempnet(torch.nn.functional.normalize(filled, dim=-1))
    torch.testing.assert_close(processed[0, 5:], scores[0, 5:] / tau[0])
    torch.testing.assert_close(processed[1], scores[1] / tau[1])


def test_processor_refuses_a_tempnet_in_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        TempNetLogitsProcessor(LMTempNet(VOCAB, hidden=8))


def test_generate_samples_from_logits_divided_by_tempnet_tau(tiny_lm, tempnet):
    """Every step's final scores equal the LM's logits for that prefix divided by TempNet's tau."""
    prompt = torch.tensor([list(b"The temperature")])
    torch.manual_seed(4)
    output = tiny_lm.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, max_new_tokens=6,
                              top_k=0, top_p=1.0, pad_token_id=256,
                              logits_processor=LogitsProcessorList([TempNetLogitsProcessor(tempnet)]),
                              return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        logits = tiny_lm(output.sequences).logits[0, prompt.shape[1] - 1:-1]  # the logits of each sampled step
    expected = logits / tempnet(torch.nn.functional.normalize(logits, dim=-1))[:, None]
    scores = torch.cat(output.scores)
    assert scores.shape == expected.shape
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)


def test_generate_helper_returns_text_and_one_tau_per_new_token(tiny_lm, tempnet):
    result = generate(tiny_lm, ByteTokenizer(), "The temperature", tempnet, max_new_tokens=8, seed=5)
    assert 1 <= len(result.token_ids) <= 8 and len(result.taus) == len(result.token_ids)
    assert all(0.2 <= tau <= 3.0 for tau in result.taus)
    assert result.text == ByteTokenizer().decode(result.token_ids)
    plain = generate(tiny_lm, ByteTokenizer(), "The temperature", None, max_new_tokens=8, seed=5)
    assert plain.taus is None
