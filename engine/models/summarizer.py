"""Conversation summaries with a local transformers model, causal or seq2seq (read from its
config), several conversations per `generate` call.

The cut rule for conversations longer than the model's window, stated once here and in docs/memory.md:
every message is rendered as `role: content`; one message alone may take at most half the prompt
budget (its beginning is kept); the first `keep_first_messages` are kept while they fit in half
the budget; then the most recent messages, newest first, as many as fit in the rest; a line
`[... N messages omitted ...]` marks the gap. The budget is the smaller of `max_input_tokens` and
the model's window less `max_new_tokens` (for a causal model, whose output shares the window).

A causal model's reply starts with `reply_prefix` ("In this conversation, the user"), which keeps
a small chat model writing prose about the conversation instead of taking a turn in it.
Decoding is greedy with a repetition penalty, no repeated n-grams, and stops where the model starts
a dialogue line of its own (`user:`, `assistant:`). The text comes back as the model wrote it:
whether it is worth keeping is for the caller to judge (a closing job does, engine.closing.summary).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import SummarizerConfig

from .files import go_offline, summarizer_directory
from .torch_setup import pick_device

log = logging.getLogger(__name__)

_HUGE = 1_000_000  # tokenizers report "no limit" as a huge model_max_length
# Where a chat model starts speaking for a participant instead of summarizing: generation stops.
_STOP_STRINGS = ["\nuser:", "\nUser:", "\nassistant:", "\nAssistant:", "\n\n\n"]


@dataclass(slots=True, frozen=True)
class Conversation:
    """What the model summarizes: `messages` are (position in the session, role, content), perhaps
    already cut by characters, and `total` is how many messages the session has."""

    name: str
    messages: tuple[tuple[int, str, str], ...]
    total: int


@dataclass(slots=True, frozen=True)
class Summary:
    text: str
    model: str
    messages_covered: int
    messages_total: int
    input_tokens: int
    output_tokens: int


def _gap(omitted: int) -> str:
    return f"[... {omitted} messages omitted ...]"


class Summarizer:
    def __init__(
        self, config: SummarizerConfig, data_dir: Path, *, device: str = "cpu", threads: int = 0
    ) -> None:
        go_offline()
        # torch and transformers take seconds to import: only a process that loads the model pays
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        started = time.perf_counter()
        self._config = config
        directory, self.name = summarizer_directory(config.path, data_dir)
        self.device = pick_device(device, threads)
        model_config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
        self.seq2seq = bool(getattr(model_config, "is_encoder_decoder", False))
        self._tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        loader = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        self._model = loader.from_pretrained(str(directory), local_files_only=True).to(self.device).eval()
        self._torch = torch
        if not self.seq2seq:
            self._tokenizer.padding_side = "left"  # generation continues from the right end
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._chat = not self.seq2seq and bool(getattr(self._tokenizer, "chat_template", None))
        # Padding is never content; where it is not also the end-of-sequence token, never emit it.
        pad, eos = self._tokenizer.pad_token_id, self._tokenizer.eos_token_id
        self._never_generate = [pad] if pad is not None and pad != eos else None
        self.budget = self._prompt_budget(model_config)
        self._prompt_overhead = self._count([self._render("")])[0]  # the prompt around the transcript
        log.info(
            "summarizer loaded",
            extra={
                "model": self.name,
                "kind": "seq2seq" if self.seq2seq else "causal",
                "device": self.device,
                "prompt_budget_tokens": self.budget,
                "seconds": round(time.perf_counter() - started, 2),
            },
        )

    def _prompt_budget(self, model_config: Any) -> int:
        limits = [self._config.max_input_tokens]
        window = getattr(model_config, "max_position_embeddings", None) or getattr(
            model_config, "n_positions", None
        )
        if self._tokenizer.model_max_length < _HUGE:
            window = min(window or _HUGE, self._tokenizer.model_max_length)
        if window:
            limits.append(window if self.seq2seq else window - self._config.max_new_tokens)
        return max(16, min(limits))

    # -- the cut rule -------------------------------------------------------------------------------

    def _count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encoded = self._tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def _truncate(self, text: str, tokens: int) -> str:
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"][: max(tokens - 1, 1)]
        return str(self._tokenizer.decode(ids, skip_special_tokens=True)) + "…"

    def cut(self, conversation: Conversation) -> tuple[str, int]:
        """(transcript, messages covered) under the cut rule."""
        budget = self.budget - self._prompt_overhead
        lines = [f"{role}: {content}" for _, role, content in conversation.messages]
        sizes = [size + 1 for size in self._count(lines)]  # each line ends in a newline
        cap = max(budget // 2, 2)
        for i, size in enumerate(sizes):
            if size > cap:
                lines[i] = self._truncate(lines[i], cap - 1)
                sizes[i] = self._count([lines[i]])[0] + 1
        whole = [position for position, _, _ in conversation.messages] == list(range(conversation.total))
        if whole and sum(sizes) <= budget:
            return "\n".join(lines), len(lines)
        # Something is left out: room for the gap markers (at most one after the opening messages
        # and one at the end, where the shard's pre-cut dropped the newest), then head and tail.
        budget -= 2 * (self._count([_gap(conversation.total)])[0] + 1)
        head: list[int] = []
        used = 0
        for i in range(min(self._config.keep_first_messages, len(lines))):
            if used + sizes[i] > budget // 2:
                break
            head.append(i)
            used += sizes[i]
        tail: list[int] = []
        for i in range(len(lines) - 1, len(head) - 1, -1):
            if used + sizes[i] > budget:
                break
            tail.append(i)
            used += sizes[i]
        kept = head + tail[::-1]
        out: list[str] = []
        previous = -1
        for i in kept:
            position = conversation.messages[i][0]
            if position != previous + 1:
                out.append(_gap(position - previous - 1))
            out.append(lines[i])
            previous = position
        if previous != conversation.total - 1 and conversation.total:
            out.append(_gap(conversation.total - previous - 1))
        return "\n".join(out), len(kept)

    def _render(self, transcript: str) -> str:
        if self.seq2seq:
            return f"summarize: {transcript}"
        request = f"Conversation:\n{transcript}\n\n{self._config.instruction}"
        if self._chat:
            chat = [{"role": "system", "content": self._config.system}, {"role": "user", "content": request}]
            prompt = str(
                self._tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            )
            return prompt + self._config.reply_prefix
        return f"{self._config.system}\n\n{request}\nSummary: {self._config.reply_prefix}"

    # -- generation ---------------------------------------------------------------------------------

    def summarize(self, conversations: Sequence[Conversation]) -> list[Summary]:
        """One generate call for the whole batch; a summary per conversation, its text as the model
        wrote it (empty if it wrote nothing)."""
        cut = [self.cut(c) for c in conversations]
        prompts = [self._render(transcript) for transcript, _ in cut]
        inputs = self._tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            add_special_tokens=not self._chat,  # a chat template already wrote its special tokens
        ).to(self.device)
        with self._torch.inference_mode():
            output = self._model.generate(
                **inputs,
                max_new_tokens=self._config.max_new_tokens,
                min_new_tokens=self._config.min_new_tokens,
                do_sample=False,
                num_beams=1,
                repetition_penalty=self._config.repetition_penalty,
                no_repeat_ngram_size=self._config.no_repeat_ngram_size,
                stop_strings=None if self.seq2seq else _STOP_STRINGS,
                tokenizer=self._tokenizer,
                pad_token_id=self._tokenizer.pad_token_id,
                suppress_tokens=self._never_generate,
            )
        generated = output if self.seq2seq else output[:, inputs["input_ids"].shape[1] :]
        results: list[Summary] = []
        for row, conversation, (_, covered), mask in zip(
            generated, conversations, cut, inputs["attention_mask"], strict=True
        ):
            text = _before_stop(str(self._tokenizer.decode(row, skip_special_tokens=True)))
            if text and not self.seq2seq:
                text = f"{self._config.reply_prefix}{'' if text[0] in ' ,.;:' else ' '}{text}".strip()
            results.append(
                Summary(
                    text=text,
                    model=self.name,
                    messages_covered=covered,
                    messages_total=conversation.total,
                    input_tokens=int(mask.sum()),
                    output_tokens=int((row != self._tokenizer.pad_token_id).sum()),
                )
            )
        return results


def _before_stop(text: str) -> str:
    """The text up to the stop string generation ended on (generate keeps it)."""
    cut = min((i for i in (text.find(stop) for stop in _STOP_STRINGS) if i >= 0), default=len(text))
    return text[:cut].strip()
