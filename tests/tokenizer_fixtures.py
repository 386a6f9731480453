"""Tiny Hugging Face tokenizer folders in the style of Llama 3, Mistral and Qwen3, built locally.

Each style pairs a small BPE trained with `tokenizers` on a few sentences (nothing is downloaded)
with a Jinja chat template that mirrors the real model's template, so chat rendering and loss
masks are exercised on the same glue, special tokens and pre-tokenization the real models use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import (
    AddedToken,
    Regex,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from tokenizers import Tokenizer as RawTokenizer

CORPUS = [
    "You are a careful assistant who reasons step by step.",
    "What is 2 + 3? Please answer with a number.",
    "The answer is 5. First add two and three, then check the sum.",
    "Think about the problem before you answer the question.",
    "Multiply 4 by 6 and then subtract 7 from the product.",
    "Sure! Here is the result: 17. Let me know if you need more help.",
    "system user assistant think reasoning content message",
    "Hello there, how are you doing today? I am fine, thank you.",
]

# Llama 3 Instruct (Meta-Llama-3-8B-Instruct tokenizer_config.json, verbatim logic).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

# Mistral-7B-Instruct-v0.3 (sentencepiece): the system message goes into the *last* user turn
# only, and assistant turns are " " + content|trim + eos. Tool branches are left out.
MISTRAL_TEMPLATE = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages | rejectattr("role", "equalto", "tool") %}
    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must \
alternate user/assistant/user/assistant/...") }}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception \
of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

# Qwen3 (hybrid thinking, e.g. Qwen3-4B): reasoning is split out of `content` at </think>, dropped
# from assistant turns before the last user query, and the final turn always gets a think block.
# The tool branches are kept so the last-query scan matches the real template.
QWEN3_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and \
not(message.content.startswith('<tool_response>') and \
message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = \
content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + \
reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

# The GPT-4 style split regex Llama 3 and Qwen use in front of byte-level BPE.
_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

STYLES = ("llama3", "mistral", "qwen3")


def _byte_level_bpe(special: list[str], non_special: list[str]) -> RawTokenizer:
    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in non_special])
    return tok


def _sentencepiece_bpe(special: list[str]) -> RawTokenizer:
    # Like Mistral's converted sentencepiece tokenizers: Metaspace prepends "▁" to the first
    # section only, and characters outside the vocab fall back to <0xNN> byte tokens.
    tok = RawTokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"].update(byte_fallback=True, fuse_unk=True)
    tok = RawTokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return tok


def _write(folder: Path, tok: RawTokenizer, config: dict[str, Any],
           generation_eos: list[str] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096, **config}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    if generation_eos is not None:
        ids = [tok.token_to_id(t) for t in generation_eos]
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": ids}))
    return folder


def build_llama3(folder: Path, *, generation_config: bool = True) -> Path:
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
               "<|end_header_id|>", "<|eot_id|>"]
    tok = _byte_level_bpe(special, [])
    bos = tok.token_to_id("<|begin_of_text|>")
    # Llama 3's post-processor adds BOS for add_special_tokens=True; the template writes it too.
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
              "chat_template": LLAMA3_TEMPLATE}
    return _write(folder, tok, config,
                  ["<|end_of_text|>", "<|eot_id|>"] if generation_config else None)


def build_mistral(folder: Path) -> Path:
    tok = _sentencepiece_bpe(["<s>", "</s>", "[INST]", "[/INST]"])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    # Written as serialized AddedTokens (dicts), as older Mistral configs store them.
    config = {
        "bos_token": {"content": "<s>", "special": True, "__type": "AddedToken"},
        "eos_token": {"content": "</s>", "special": True, "__type": "AddedToken"},
        "unk_token": "<unk>",
        "chat_template": MISTRAL_TEMPLATE,
    }
    return _write(folder, tok, config, None)


def build_qwen3(folder: Path) -> Path:
    tok = _byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], ["<think>", "</think>"])
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "chat_template": QWEN3_TEMPLATE}
    return _write(folder, tok, config, ["<|im_end|>", "<|endoftext|>"])


def build(style: str, folder: Path) -> Path:
    builders = {"llama3": build_llama3, "mistral": build_mistral, "qwen3": build_qwen3}
    return builders[style](folder)


# The literal end-of-turn marker each style writes after an assistant turn.
END_OF_TURN = {"llama3": "<|eot_id|>", "mistral": "</s>", "qwen3": "<|im_end|>"}
