"""Tiny random models the tests build themselves, so the real transformers loading and generation
code runs in the suite in well under a second per batch, with nothing downloaded."""

from __future__ import annotations

from pathlib import Path


def build_tiny_t5(directory: Path, seed: int = 0) -> Path:
    """A 2-layer T5 with the byte-level ByT5 tokenizer (which needs no vocabulary file)."""
    import torch
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = ByT5Tokenizer(extra_ids=0)  # 3 special tokens + 256 bytes: every output decodes to bytes
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
    )
    # Random weights may greedily emit bytes that are not UTF-8 text (an empty summary); take the
    # first seed whose output on a probe prompt decodes to text.
    for attempt in range(seed, seed + 50):
        torch.manual_seed(attempt)
        model = T5ForConditionalGeneration(config).eval()
        probe = tokenizer(["summarize: user: hello there"], return_tensors="pt")
        out = model.generate(
            **probe, max_new_tokens=8, min_new_tokens=8, suppress_tokens=[0], do_sample=False
        )
        if tokenizer.decode(out[0], skip_special_tokens=True).strip():
            break
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def build_tiny_causal(directory: Path, seed: int = 0) -> Path:
    """A 2-layer Llama-shaped causal model with the same byte-level tokenizer and no chat template."""
    import torch
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = ByT5Tokenizer(extra_ids=0)
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
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory
