"""Tiny random models the tests build themselves, so the real transformers loading and generation
code runs in the suite in well under a second per batch, with nothing downloaded.

Random weights would often emit byte tokens that are not UTF-8 text, and an empty summary is a
failed job. So the output head is rigged: every row but those of the 26 lowercase letters is zero,
and the letters' rows come in pairs w, -w. For any hidden state one of each pair scores above zero,
so the greedy choice is always a letter: every summary is text of exactly `max_new_tokens` letters,
which still depend on the conversation, as a real model's would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_BYTE_OFFSET = 3  # ByT5: pad, eos, unk, then the 256 bytes


def _letters_only(head: Any, seed: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    letters = [_BYTE_OFFSET + b for b in range(ord("a"), ord("z") + 1)]
    half = torch.randn(13, head.weight.shape[1], generator=generator)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[letters] = torch.cat([half, -half])


def _tokenizer() -> Any:
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer(extra_ids=0)  # no vocabulary file needed


def _save(directory: Path, model_class: Any, config: Any, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    model = model_class(config).eval()
    _letters_only(model.lm_head, seed)
    model.save_pretrained(str(directory))
    _tokenizer().save_pretrained(str(directory))
    return directory


def build_tiny_t5(directory: Path, seed: int = 0) -> Path:
    """A 2-layer T5 with the byte-level ByT5 tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = _tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        n_positions=512,  # read by the cut rule as the model's window
        decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,  # the rigged head must not change the input embeddings
    )
    return _save(directory, T5ForConditionalGeneration, config, seed)


def build_tiny_causal(directory: Path, seed: int = 0) -> Path:
    """A 2-layer Llama-shaped causal model with the same byte-level tokenizer and no chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return _save(directory, LlamaForCausalLM, config, seed)
