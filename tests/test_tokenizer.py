"""Chat rendering and loss masks of sftrl.data.tokenizer on Llama 3, Mistral and Qwen3 styles."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import tokenizer_fixtures as tf
import transformers

from sftrl.data.tokenizer import Tokenizer, TokenizerError, load_tokenizer

SYSTEM = {"role": "system", "content": "You are a careful assistant."}
USER1 = {"role": "user", "content": "What is 2 + 3?"}
USER2 = {"role": "user", "content": "Multiply 4 by 6 and then subtract 7."}
# Distinct words per assistant turn, so "no assistant content outside the mask" can be checked.
ASSISTANT1 = {"role": "assistant",
              "content": "<think>\nFirst add two and three.\n</think>\n\nThe answer is five."}
ASSISTANT2 = {"role": "assistant", "content": "Sure! Here is the result: seventeen."}

CONVERSATIONS = {
    "single": [USER1, ASSISTANT1],
    "single_system": [SYSTEM, USER1, ASSISTANT2],
    "multi": [USER1, ASSISTANT1, USER2, ASSISTANT2],
    "multi_system": [SYSTEM, USER1, ASSISTANT1, USER2, ASSISTANT1],
}

GENERATION_HEADER = {
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "[/INST]",
    "qwen3": "<|im_start|>assistant\n",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {style: tf.build(style, root / style) for style in tf.STYLES}


@pytest.fixture(scope="module")
def toks(folders: dict[str, Path]) -> dict[str, Tokenizer]:
    return {style: load_tokenizer(folder) for style, folder in folders.items()}


@pytest.fixture(scope="module")
def hf_toks(folders: dict[str, Path]) -> dict[str, transformers.PreTrainedTokenizerBase]:
    return {s: transformers.AutoTokenizer.from_pretrained(f) for s, f in folders.items()}


def expected_turns(style: str, messages: list[dict]) -> list[str]:
    """What each assistant turn renders to, end-of-turn marker included, per the real templates."""
    eot = tf.END_OF_TURN[style]
    last_query = max(i for i, m in enumerate(messages) if m["role"] == "user")
    turns = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        content = message["content"]
        if style != "qwen3":  # Llama 3 and Mistral render content|trim
            turns.append(content.strip() + eot)
            continue
        reasoning = message.get("reasoning_content")
        if reasoning is None and "</think>" in content:
            reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
            content = content.split("</think>")[-1].lstrip("\n")
        if i > last_query and (i == len(messages) - 1 or reasoning):
            content = f"<think>\n{(reasoning or '').strip(chr(10))}\n</think>\n\n" + content.lstrip(
                "\n")
        turns.append(content + eot)
    return turns


def masked_runs(tok: Tokenizer, ids: np.ndarray, mask: np.ndarray) -> list[str]:
    """Decoded text of each maximal run of mask == 1."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    return [tok.decode(ids[a:b]) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def hf_ids(hf_tok, messages: list[dict], **kwargs) -> list[int]:
    out = hf_tok.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


@pytest.mark.parametrize("style", tf.STYLES)
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_mask_is_exactly_assistant_content_and_end_of_turn(style, name, toks, hf_toks):
    tok, messages = toks[style], CONVERSATIONS[name]
    ids, mask = tok.encode_chat(messages)
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape
    assert ids.tolist() == hf_ids(hf_toks[style], messages)
    expected = expected_turns(style, messages)
    assert masked_runs(tok, ids, mask) == expected
    unmasked = tok.decode(ids[mask == 0])
    for turn in expected:
        body = turn.removesuffix(tf.END_OF_TURN[style]).split("\n")[-1]  # the final answer line
        assert body not in unmasked
    # Every turn's end-of-turn token is trained on; the prompt's ones are not.
    eot_id = tok.encode(tf.END_OF_TURN[style])[0]
    assert int(mask[ids == eot_id].sum()) == len(expected)


def test_qwen3_rewrites_reasoning_and_mask_follows_render(toks, hf_toks):
    tok = toks["qwen3"]
    messages = [
        USER1,
        {"role": "assistant", "content": "The answer is five.", "reasoning_content": "Add them."},
        USER2,
        {"role": "assistant", "content": "seventeen", "reasoning_content": "Four sixes less 7."},
    ]
    ids, mask = tok.encode_chat(messages)
    assert ids.tolist() == hf_ids(hf_toks["qwen3"], messages)
    runs = masked_runs(tok, ids, mask)
    # The first turn precedes the last user query, so its reasoning is not rendered at all.
    assert runs == ["The answer is five.<|im_end|>",
                    "<think>\nFour sixes less 7.\n</think>\n\nseventeen<|im_end|>"]
    assert "Add them" not in tok.decode(ids)
    # A final turn without reasoning still gets the template's empty think block, trained on.
    ids, mask = tok.encode_chat([USER1, {"role": "assistant", "content": "five"}])
    assert masked_runs(tok, ids, mask) == ["<think>\n\n</think>\n\nfive<|im_end|>"]


def test_trimmed_content_masks_what_is_rendered(toks):
    tok = toks["llama3"]
    ids, mask = tok.encode_chat([USER1, {"role": "assistant", "content": "  five \n"}])
    assert masked_runs(tok, ids, mask) == ["five<|eot_id|>"]


PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m.role + ': ' + m.content }}"
    "{% if m.role == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def test_token_straddling_header_and_content_is_trained_on(tmp_path, folders):
    # The generation prompt ends in a space that BPE merges into the first content token.
    folder = shutil.copytree(folders["llama3"], tmp_path / "plain")
    (folder / "chat_template.jinja").write_text(PLAIN_TEMPLATE)
    tok = load_tokenizer(folder)
    ids, mask = tok.encode_chat([USER1, {"role": "assistant", "content": "five"}])
    assert tok.decode(ids) == "user: What is 2 + 3?\nassistant: five<|end_of_text|>"
    first = int(np.flatnonzero(mask)[0])
    assert tok.decode(ids[first:first + 1]).startswith(" ")  # it really straddles
    assert masked_runs(tok, ids, mask) == [" five<|end_of_text|>"]
    assert tok.decode(ids[mask == 0]) == "user: What is 2 + 3?\nassistant:"


@pytest.mark.parametrize("style", tf.STYLES)
@pytest.mark.parametrize("name", ["single", "multi_system"])
def test_generation_prompt(style, name, toks, hf_toks):
    tok = toks[style]
    prompt = CONVERSATIONS[name][:-1]
    ids, mask = tok.encode_chat(prompt, add_generation_prompt=True)
    assert not mask.any()
    assert ids.tolist() == hf_ids(hf_toks[style], prompt, add_generation_prompt=True)
    assert tok.decode(ids).endswith(GENERATION_HEADER[style])
    assert tok.encode_prompt(prompt) == ids.tolist()
    # Turns before the prompt are context, not targets; Mistral puts the system text in the
    # last user turn of a prompt.
    if name == "multi_system":
        assert SYSTEM["content"] in tok.decode(ids)


@pytest.mark.parametrize("style", tf.STYLES)
def test_encode_prompt_from_problem_string(style, toks):
    tok = toks[style]
    ids = tok.encode_prompt(USER2["content"])
    assert ids == tok.encode_chat([USER2], add_generation_prompt=True)[0].tolist()
    assert USER2["content"] in tok.decode(ids)


def test_single_bos(toks):
    tok = toks["llama3"]
    ids, _ = tok.encode_chat(CONVERSATIONS["multi"])
    assert tok.bos_id is not None and ids[0] == tok.bos_id
    assert int((ids == tok.bos_id).sum()) == 1
    assert tok.encode("Hello", add_special_tokens=True) == [tok.bos_id, *tok.encode("Hello")]
    assert tok.decode(tok.encode("Hello there, 17!")) == "Hello there, 17!"
    assert tok.decode(tok.encode("<|eot_id|>"), skip_special_tokens=True) == ""


def test_special_ids_and_vocab(toks, hf_toks, folders, tmp_path):
    for style, tok in toks.items():
        hf = hf_toks[style]
        assert tok.vocab_size == len(hf)
        assert tok.eos_id == hf.eos_token_id
        assert tok.stop_ids[0] == tok.eos_id
    llama, qwen, mistral = toks["llama3"], toks["qwen3"], toks["mistral"]
    eot = llama.encode("<|eot_id|>")[0]
    assert llama.stop_ids == (llama.eos_id, eot) and llama.pad_id == llama.eos_id
    assert qwen.pad_id == qwen.encode("<|endoftext|>")[0] != qwen.eos_id
    assert set(qwen.stop_ids) == {qwen.eos_id, qwen.pad_id}
    assert mistral.stop_ids == (mistral.encode("</s>")[0],)
    # Without generation_config.json the end-of-turn token is read off the template.
    bare = tf.build_llama3(tmp_path / "bare", generation_config=False)
    assert load_tokenizer(bare).stop_ids == llama.stop_ids


def test_loads_folder_saved_by_transformers(tmp_path, folders):
    raw = load_tokenizer(folders["llama3"])._raw
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
        pad_token="<|eot_id|>", chat_template=tf.LLAMA3_TEMPLATE,
    )
    saved = tmp_path / "saved"
    hf.save_pretrained(saved)
    tok = load_tokenizer(saved)
    assert tok.chat_template == tf.LLAMA3_TEMPLATE
    assert tok.pad_id == tok.encode("<|eot_id|>")[0]
    messages = CONVERSATIONS["multi_system"]
    ids, mask = tok.encode_chat(messages)
    reloaded = transformers.AutoTokenizer.from_pretrained(saved)
    assert ids.tolist() == hf_ids(reloaded, messages)
    assert masked_runs(tok, ids, mask) == expected_turns("llama3", messages)


def test_chat_template_file_wins_and_named_templates(tmp_path, folders):
    folder = shutil.copytree(folders["qwen3"], tmp_path / "q")
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "x"},
                               {"name": "default", "template": tf.QWEN3_TEMPLATE}]
    config_file.write_text(json.dumps(config))
    assert load_tokenizer(folder).chat_template == tf.QWEN3_TEMPLATE
    (folder / "chat_template.jinja").write_text(tf.LLAMA3_TEMPLATE)
    assert load_tokenizer(folder).chat_template == tf.LLAMA3_TEMPLATE


BAD_MESSAGES = [
    ("not a list", False, r"messages: expected a non-empty list"),
    ([], False, r"messages: expected a non-empty list"),
    ([USER1, "hi"], False, r"messages\[1\]: expected a dict"),
    ([{"content": "hi"}, ASSISTANT1], False, r"messages\[0\]\.role: missing or empty"),
    ([{"role": "", "content": "hi"}, ASSISTANT1], False, r"messages\[0\]\.role: missing"),
    ([USER1, {"role": "bot", "content": "x"}], False, r"messages\[1\]\.role: unknown role 'bot'"),
    ([USER1, {"role": "assistant"}], False, r"messages\[1\]\.content: missing"),
    ([USER1, {"role": "assistant", "content": ""}], False, r"messages\[1\]\.content: missing"),
    ([USER1, {"role": "assistant", "content": 5}], False, r"messages\[1\]\.content: missing"),
    ([SYSTEM, USER1], False, r"messages\[\*\]\.role: no 'assistant' message"),
    ([USER1, ASSISTANT1], True, r"messages\[1\]\.role: the last message is an assistant"),
]


@pytest.mark.parametrize("style", tf.STYLES)
@pytest.mark.parametrize(("messages", "generation", "error"), BAD_MESSAGES)
def test_bad_messages_name_index_and_field(style, messages, generation, error, toks):
    with pytest.raises(TokenizerError, match=error):
        toks[style].encode_chat(messages, add_generation_prompt=generation)


@pytest.mark.parametrize("style", tf.STYLES)
def test_content_with_end_of_turn_token_is_rejected(style, toks):
    eot = tf.END_OF_TURN[style]
    bad = [USER1, {"role": "assistant", "content": f"five{eot}more"}]
    with pytest.raises(TokenizerError, match=r"messages\[1\]\.content: contains the end-of-turn"):
        toks[style].encode_chat(bad)
    bad = [USER1, {"role": "assistant", "content": "five", "reasoning_content": f"a{eot}"}]
    with pytest.raises(TokenizerError, match=r"messages\[1\]\.reasoning_content: contains"):
        toks[style].encode_chat(bad)


def test_template_exception_becomes_tokenizer_error(toks):
    with pytest.raises(TokenizerError, match=r"mistral: chat template failed: .*alternate"):
        toks["mistral"].encode_chat([USER1, USER2, ASSISTANT1])


def test_load_errors_name_folder_file_and_field(tmp_path, folders):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    folder = shutil.copytree(folders["llama3"], tmp_path / "l")
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())

    config_file.write_text("{\n  \"eos_token\": ,\n}")
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json:2: invalid JSON"):
        load_tokenizer(folder)
    config_file.write_text(json.dumps({**config, "eos_token": "<|nope|>"}))
    with pytest.raises(TokenizerError, match=r"field 'eos_token': token '<\|nope\|>' is not in"):
        load_tokenizer(folder)
    config_file.write_text(json.dumps({k: v for k, v in config.items() if k != "eos_token"}))
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json: field 'eos_token': missing"):
        load_tokenizer(folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [10**6]}))
    config_file.write_text(json.dumps(config))
    with pytest.raises(TokenizerError, match=r"generation_config.json: field 'eos_token_id'"):
        load_tokenizer(folder)
    (folder / "generation_config.json").unlink()

    # A base tokenizer without a template still encodes text; chats fail naming the folder.
    config_file.write_text(json.dumps({k: v for k, v in config.items() if k != "chat_template"}))
    base = load_tokenizer(folder)
    assert base.decode(base.encode("Hello")) == "Hello"
    with pytest.raises(TokenizerError, match=r"/l: no chat template"):
        base.encode_chat(CONVERSATIONS["single"])

    config_file.unlink()
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json: missing"):
        load_tokenizer(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match=r"tokenizer.json: missing"):
        load_tokenizer(folder)
