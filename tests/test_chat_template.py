"""Chat templates: decoderlm's text and ids equal transformers' `apply_chat_template` for ChatML,
Llama-3-style and Mistral-style templates over multi-turn conversations with system prompts; the
template of a saved Hugging Face tokenizer is read back (string, named-list and .jinja forms);
template errors are one line."""

from __future__ import annotations

import json

import pytest
from chat_support import CONVERSATIONS, GPT2, as_transformers, chatml_bpe, small_bpe

from decoderlm.chat import (
    ChatRenderer, ChatTemplate, add_special_tokens, default_template, read_saved_template, read_template_file,
    save_template, special_token_variables,
)
from decoderlm.errors import DecoderLMError

pytest.importorskip("transformers")

LLAMA3_STYLE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
LLAMA3_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
MISTRAL_STYLE = """{{ bos_token }}
{% for message in messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {{ '[INST] ' + message['content'] + ' [/INST]' }}
    {% else %}
        {{ message['content'] + eos_token }}
    {% endif %}
{% endfor %}
"""


def _ids(hf, conversation, **kwargs):
    return list(hf.apply_chat_template(conversation, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def _assert_parity(renderer, hf, conversations):
    for conv in conversations:
        assert renderer.text(conv) == hf.apply_chat_template(conv, tokenize=False)
        assert renderer.example(conv).ids.tolist() == _ids(hf, conv)
        prompt = conv[:-1]
        assert renderer.prompt_ids(prompt) == _ids(hf, prompt, add_generation_prompt=True)


def test_default_chatml_matches_transformers():
    tok = chatml_bpe()
    _assert_parity(ChatRenderer(default_template(), tok), as_transformers(tok, default_template().source), CONVERSATIONS)


def test_llama3_style_template_with_bos_matches_transformers():
    tok = small_bpe(LLAMA3_TOKENS)
    hf = as_transformers(tok, LLAMA3_STYLE)
    hf.bos_token = "<|begin_of_text|>"
    renderer = ChatRenderer(ChatTemplate(LLAMA3_STYLE), tok, {**special_token_variables(tok), "bos_token": "<|begin_of_text|>"})
    _assert_parity(renderer, hf, CONVERSATIONS)
    assert renderer.end_of_turn == "<|eot_id|>"
    assert renderer.stop_token_ids() == [tok.tok.token_to_id("<|eot_id|>"), tok.eos_id]


def test_mistral_style_template_with_eos_and_raise_exception_matches_transformers():
    tok = small_bpe(("<s>", "</s>"))
    hf = as_transformers(tok, MISTRAL_STYLE)
    hf.bos_token, hf.eos_token = "<s>", "</s>"
    renderer = ChatRenderer(ChatTemplate(MISTRAL_STYLE), tok, {"bos_token": "<s>", "eos_token": "</s>"})
    no_system = [[m for m in conv if m["role"] != "system"] for conv in CONVERSATIONS]
    _assert_parity(renderer, hf, no_system)
    assert renderer.end_of_turn == "</s>"
    with pytest.raises(DecoderLMError, match="failed to render: Conversation roles must alternate") as err:
        renderer.example(CONVERSATIONS[1])  # starts with a system message
    assert "\n" not in str(err.value)


def test_gpt2_bpe_with_chatml_matches_transformers():
    if not (GPT2 / "vocab.json").is_file():
        pytest.skip("../shared/tokenizers/gpt2 is not available")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from decoderlm.data.tokenizers import HFTokenizer

    raw = Tokenizer(models.BPE.from_file(str(GPT2 / "vocab.json"), str(GPT2 / "merges.txt")))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    tok, added = add_special_tokens(HFTokenizer(raw, "hf"), default_template().special_tokens)
    assert added == 2 and tok.vocab_size == 50259
    hf = as_transformers(tok, default_template().source)
    _assert_parity(ChatRenderer(default_template(), tok), hf, CONVERSATIONS)


def test_template_saved_by_transformers_is_read_back(tmp_path):
    tok = small_bpe(LLAMA3_TOKENS)
    hf = as_transformers(tok, LLAMA3_STYLE)
    hf.bos_token = "<|begin_of_text|>"
    hf.save_pretrained(tmp_path)
    template = read_saved_template(tmp_path)
    assert template is not None and template.source == LLAMA3_STYLE
    variables = special_token_variables(tok, tmp_path)
    assert variables["bos_token"] == "<|begin_of_text|>" and variables["eos_token"] == "[eos]"
    _assert_parity(ChatRenderer(template, tok, variables), hf, CONVERSATIONS)


def test_tokenizer_config_forms(tmp_path):
    config = tmp_path / "tokenizer_config.json"
    assert read_saved_template(tmp_path) is None
    config.write_text(json.dumps({"chat_template": "{{ messages[0]['content'] }}", "bos_token": {"content": "<s>"}}))
    assert read_saved_template(tmp_path).source == "{{ messages[0]['content'] }}"
    assert special_token_variables(small_bpe(), tmp_path)["bos_token"] == "<s>"
    named = [{"name": "default", "template": "A"}, {"name": "tool_use", "template": "B"}]
    config.write_text(json.dumps({"chat_template": named}))
    assert read_saved_template(tmp_path).source == "A"
    assert read_saved_template(tmp_path, name="tool_use").source == "B"
    with pytest.raises(DecoderLMError, match="no chat template named 'rag'; it has: default, tool_use"):
        read_saved_template(tmp_path, name="rag")
    save_template(default_template(), tmp_path)  # a chat_template.jinja file wins over the config entry
    assert read_saved_template(tmp_path).source == default_template().source


def test_template_errors_are_one_line(tmp_path):
    with pytest.raises(DecoderLMError, match=r"syntax error at line 1"):
        ChatTemplate("{% for m in messages %}{{ m['content'] }}")
    bad = tmp_path / "bad.jinja"
    bad.write_text("{{ messages[0]['content'] + 1 }}")
    renderer = ChatRenderer(read_template_file(bad), small_bpe())
    with pytest.raises(DecoderLMError, match=r"bad.jinja\) failed to render: TypeError") as err:
        renderer.text(CONVERSATIONS[0])
    assert "\n" not in str(err.value)
    empty = tmp_path / "empty.jinja"
    empty.write_text("  \n")
    with pytest.raises(DecoderLMError, match="is empty"):
        read_template_file(empty)
    with pytest.raises(DecoderLMError, match="cannot read chat template"):
        read_template_file(tmp_path / "missing.jinja")
