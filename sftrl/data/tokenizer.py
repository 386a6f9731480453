"""Hugging Face tokenizers with chat templates and exact assistant loss masks, offline.

`load_tokenizer(folder)` reads `tokenizer.json` (through the `tokenizers` library) plus
`tokenizer_config.json` / `chat_template.jinja` / `generation_config.json` from a local folder.
`Tokenizer.encode_chat` renders a conversation with the folder's Jinja chat template (the same
sandboxed renderer `transformers.apply_chat_template` uses, so ids match it exactly) and returns a
loss mask that is 1 on exactly the text each assistant turn generates: its rendered content and
the template's end-of-turn marker, never role headers, prompts or glue.

How assistant spans are found, in the rendered text (templates may rewrite turns, e.g. Qwen3 drops
reasoning from old turns and adds a think block to the last one, so the span is taken from what is
rendered, not from the message):
  * start: where the generation prompt for that turn ends. The conversation up to the turn is
    rendered with `add_generation_prompt=True`; if that text is a prefix of the full rendering the
    turn starts right after it. Templates that move text around (Mistral puts the system message
    into the *last* user turn only) are handled by matching the longest tail of that prompt text
    that occurs in the full rendering after the previous turn, which must include the whole
    assistant header.
  * end: the end of the first end-of-turn marker (a `stop_ids` token: eos, `<|eot_id|>`,
    `<|im_end|>`, ...) at or after the start. Message content may therefore not contain those
    markers as text.
Tokens are assigned to spans by overlap: a token is trained on iff any of its characters lies in
an assistant span. So a token straddling the header/content boundary (e.g. " five" after a header
ending in a space) is trained on: no unmasked token carries assistant text, and every content
character gets a loss. End-of-turn markers are special tokens, split out before BPE, so nothing
straddles the end of a span. Tokens that split one character (byte fallback) all share that
character's verdict; zero-width tokens count as covering their start character.

BOS: chat templates write BOS themselves (Llama 3's `{{ bos_token }}`), so chats are tokenized
with `add_special_tokens=False`, exactly as `transformers` does; no second BOS is added.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import tokenizers
from transformers.utils.chat_template_utils import render_jinja_template

ROLES = ("system", "user", "assistant")
# The special-token names a chat template can read, as `transformers` passes them.
_TEMPLATE_TOKEN_FIELDS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                          "cls_token", "mask_token")
_PROBE_USER, _PROBE_ASSISTANT = "\ue000", "\ue001"  # private-use chars no template rewrites


class TokenizerError(ValueError):
    """A tokenizer folder, file, field or chat message that cannot be used; the message names it."""


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{file}:{e.lineno}: invalid JSON: {e.msg}") from e
    if not isinstance(data, dict):
        raise TokenizerError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_text(value: Any, file: Path, field: str) -> str | None:
    """A special token as configs store it: a string, a serialized AddedToken dict, or null."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f"{file}: field {field!r}: expected a token string, got {value!r}")


def _chat_template(folder: Path, config: dict[str, Any], config_file: Path) -> str | None:
    # transformers v5 saves the template as chat_template.jinja, which wins over the config entry.
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise TokenizerError(f"{config_file}: field 'chat_template': no template named 'default'")
    raise TokenizerError(f"{config_file}: field 'chat_template': expected a string or a list")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Loads a Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json), offline."""
    folder = Path(path)
    if not folder.is_dir():
        raise TokenizerError(f"{folder}: tokenizer folder does not exist")
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise TokenizerError(f"{tokenizer_file}: missing (only fast tokenizers are supported)")
    config_file = folder / "tokenizer_config.json"
    if not config_file.is_file():
        raise TokenizerError(f"{config_file}: missing")
    try:
        raw = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    except Exception as e:  # the Rust loader raises a bare Exception on malformed files
        raise TokenizerError(f"{tokenizer_file}: cannot load: {e}") from e
    config = _read_json(config_file)
    # Legacy folders keep the special tokens in special_tokens_map.json; the config wins.
    legacy_file = folder / "special_tokens_map.json"
    legacy = _read_json(legacy_file) if legacy_file.is_file() else {}
    special: dict[str, str] = {}
    for field in _TEMPLATE_TOKEN_FIELDS:
        source, value = (config_file, config[field]) if field in config else (
            legacy_file, legacy.get(field))
        text = _token_text(value, source, field)
        if text is not None:
            special[field] = text
    generation_file = folder / "generation_config.json"
    generation = _read_json(generation_file) if generation_file.is_file() else {}
    return Tokenizer(
        raw, path=str(folder), special_tokens=special,
        chat_template=_chat_template(folder, config, config_file),
        generation_eos=generation.get("eos_token_id"), config_file=config_file,
        generation_file=generation_file,
    )


class Tokenizer:
    """A loaded tokenizer: plain encode/decode plus chat rendering with assistant loss masks."""

    def __init__(
        self,
        raw: tokenizers.Tokenizer,
        *,
        path: str,
        special_tokens: Mapping[str, str],
        chat_template: str | None,
        generation_eos: Any = None,
        config_file: Path | None = None,
        generation_file: Path | None = None,
    ) -> None:
        self.path = path
        self._raw = raw
        self._special_tokens = dict(special_tokens)
        self.chat_template = chat_template
        self.vocab_size: int = raw.get_vocab_size(with_added_tokens=True)
        config_name = str(config_file or Path(path) / "tokenizer_config.json")
        if "eos_token" not in special_tokens:
            raise TokenizerError(f"{config_name}: field 'eos_token': missing")
        self.eos_id: int = self._token_id(special_tokens["eos_token"], config_name, "eos_token")
        bos = special_tokens.get("bos_token")
        self.bos_id: int | None = (
            None if bos is None else self._token_id(bos, config_name, "bos_token"))
        pad = special_tokens.get("pad_token")
        self.pad_id: int = (
            self.eos_id if pad is None else self._token_id(pad, config_name, "pad_token"))
        stops = [self.eos_id, *self._generation_eos(generation_eos, generation_file)]
        if chat_template is not None:
            eot = self._probe_end_of_turn()
            if eot is not None:
                stops.append(eot)
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys(stops))
        # Added tokens match their literal text; others (rare as stops) their decoded text.
        added = raw.get_added_tokens_decoder()
        self._stop_strings = tuple(
            added[i].content if i in added else raw.decode([i], skip_special_tokens=False)
            for i in self.stop_ids)

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size}, stop_ids={self.stop_ids})"

    def _token_id(self, token: str, source: str, field: str) -> int:
        token_id = self._raw.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"{source}: field {field!r}: token {token!r} is not in the vocab")
        return token_id

    def _generation_eos(self, value: Any, file: Path | None) -> list[int]:
        if value is None:
            return []
        ids = value if isinstance(value, list) else [value]
        for token_id in ids:
            if not isinstance(token_id, int) or not 0 <= token_id < self.vocab_size:
                raise TokenizerError(
                    f"{file}: field 'eos_token_id': {token_id!r} is not a token id below "
                    f"{self.vocab_size}")
        return ids

    def _probe_end_of_turn(self) -> int | None:
        """The first special token the template writes after an assistant turn's content."""
        messages = [{"role": "user", "content": _PROBE_USER},
                    {"role": "assistant", "content": _PROBE_ASSISTANT}]
        try:
            text = self.render_chat(messages)
        except TokenizerError:
            return None  # e.g. a template that insists on a system turn: eos and config suffice
        at = text.find(_PROBE_ASSISTANT)
        if at < 0:
            return None
        special_ids = {i for i, t in self._raw.get_added_tokens_decoder().items() if t.special}
        tail = self._raw.encode(text[at + 1:], add_special_tokens=False).ids
        return next((i for i in tail if i in special_ids), None)

    # -- plain text ---------------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"{self.path}: encode() expects a str, got {type(text).__name__}")
        return self._raw.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special_tokens: bool = False) -> str:
        return self._raw.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # -- chat ---------------------------------------------------------------------------------

    def render_chat(self, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        """The chat template's text for `messages` (not validated; see `encode_chat`)."""
        if self.chat_template is None:
            raise TokenizerError(
                f"{self.path}: no chat template (tokenizer_config.json field 'chat_template' "
                "or chat_template.jinja)")
        # As apply_chat_template does: keys set to None are dropped before rendering.
        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            rendered, _ = render_jinja_template(
                conversations=[chat], chat_template=self.chat_template,
                add_generation_prompt=add_generation_prompt, **self._special_tokens)
        except jinja2.TemplateError as e:
            raise TokenizerError(f"{self.path}: chat template failed: {e}") from e
        return rendered[0]

    def encode_chat(
        self, messages: list[dict], *, add_generation_prompt: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 [L], loss_mask int32 [L]); the mask is 1 on assistant content + end-of-turn.

        With `add_generation_prompt=True` this is a prompt ending in the assistant header, and the
        mask is all zero.
        """
        self._validate(messages, add_generation_prompt)
        text = self.render_chat(messages, add_generation_prompt=add_generation_prompt)
        encoding = self._raw.encode(text, add_special_tokens=False)
        ids = np.asarray(encoding.ids, np.int32)
        mask = np.zeros(len(ids), np.int32)
        if add_generation_prompt:
            return ids, mask
        offsets = np.asarray(encoding.offsets, np.int64).reshape(-1, 2)
        first, stop = offsets[:, 0], np.maximum(offsets[:, 1], offsets[:, 0] + 1)
        for begin, end in self._assistant_spans(messages, text):
            mask[(first < end) & (stop > begin)] = 1
        return ids, mask

    def encode_prompt(self, messages_or_problem: str | list[dict]) -> list[int]:
        """Token ids of a generation prompt; a str is a single user turn."""
        messages = messages_or_problem
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        ids, _ = self.encode_chat(messages, add_generation_prompt=True)
        return ids.tolist()

    def _validate(self, messages: Any, add_generation_prompt: bool) -> None:
        if not isinstance(messages, list) or not messages:
            raise TokenizerError(
                f"messages: expected a non-empty list of message dicts, got {messages!r:.80}")
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise TokenizerError(f"messages[{i}]: expected a dict, got {message!r:.80}")
            role = message.get("role")
            if not isinstance(role, str) or not role:
                raise TokenizerError(f"messages[{i}].role: missing or empty")
            if role not in ROLES:
                raise TokenizerError(
                    f"messages[{i}].role: unknown role {role!r} (expected one of {ROLES})")
            content = message.get("content")
            if not isinstance(content, str) or not content:
                raise TokenizerError(f"messages[{i}].content: missing, empty or not a string")
            # The template's own end-of-turn markers delimit the loss spans, so no text field
            # (content, reasoning_content, ...) may fake one.
            for field, value in message.items():
                for stop in self._stop_strings:
                    if isinstance(value, str) and stop and stop in value:
                        raise TokenizerError(
                            f"messages[{i}].{field}: contains the end-of-turn token {stop!r}")
        last = len(messages) - 1
        if add_generation_prompt and messages[last]["role"] == "assistant":
            raise TokenizerError(
                f"messages[{last}].role: the last message is an assistant turn but "
                "add_generation_prompt=True")
        if not add_generation_prompt and not any(m["role"] == "assistant" for m in messages):
            raise TokenizerError(
                "messages[*].role: no 'assistant' message to train on "
                "(add_generation_prompt=False)")

    def _assistant_spans(self, messages: list[dict], text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        cursor = 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = self._turn_start(messages, i, text, cursor)
            ends = [at + len(s) for s in self._stop_strings if (at := text.find(s, start)) >= 0]
            if not ends:
                raise TokenizerError(
                    f"messages[{i}]: {self.path}: no end-of-turn token {self._stop_strings} "
                    "after this assistant turn in the rendered chat")
            spans.append((start, min(ends)))
            cursor = min(ends)
        return spans

    def _turn_start(self, messages: list[dict], i: int, text: str, cursor: int) -> int:
        prompt = self.render_chat(messages[:i], add_generation_prompt=True)
        if len(prompt) >= cursor and text.startswith(prompt):
            return len(prompt)
        base = self.render_chat(messages[:i])
        header = len(prompt) - len(base) if prompt.startswith(base) else 0
        # Longest tail of the prompt text found after the previous turn; "occurs" is monotone in
        # the tail length, so binary search.
        lo, hi = 0, len(prompt)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if text.find(prompt[-mid:], cursor) >= 0:
                lo = mid
            else:
                hi = mid - 1
        if lo == 0 or lo < header:
            raise TokenizerError(
                f"messages[{i}]: {self.path}: cannot locate this assistant turn in the rendered "
                "chat (the template rewrites the conversation before it)")
        return text.find(prompt[-lo:], cursor) + lo
