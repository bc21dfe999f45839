"""Exports that chat: `lm.save(dir, format="hf")` / `decoderlm export` carry the chat template, so
transformers renders decoderlm's ids and stops at the end of turn; an imported HF checkpoint brings
its own template."""

from __future__ import annotations

import json

import pytest
import torch

import decoderlm
from decoderlm import DecoderLM, get_recipe
from decoderlm.chat import default_template
from decoderlm.cli import main
from decoderlm.generate import complete
from decoderlm.lm import LanguageModel

from chat_support import CONVERSATIONS, chatml_bpe, small_bpe

transformers = pytest.importorskip("transformers")


def _ids(encoded):
    """apply_chat_template(tokenize=True) gives a list, or a BatchEncoding in newer transformers."""
    return list(encoded["input_ids"]) if hasattr(encoded, "keys") else list(encoded)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A tiny Llama-architecture decoderlm model with ChatML, saved as a run directory."""
    tokenizer = chatml_bpe()
    config = get_recipe("llama-gutenberg").model.replace(vocab_size=tokenizer.vocab_size, d_model=32, n_layer=1,
                                                         n_head=2, n_kv_head=1, max_seq_len=128)
    torch.manual_seed(0)
    lm = LanguageModel.from_model(DecoderLM(config).eval(), tokenizer, chat_template=default_template())
    return lm.save(tmp_path_factory.mktemp("chat") / "run")


@pytest.fixture(scope="module")
def exported(chat_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    assert main(["export", str(chat_run), "--format", "hf", "--out", str(out)]) == 0
    return out


def test_transformers_renders_decoderlms_ids(chat_run, exported):
    renderer = decoderlm.load(chat_run).chat_renderer()
    hf = transformers.AutoTokenizer.from_pretrained(exported)
    assert json.loads((exported / "tokenizer_config.json").read_text())["chat_template"] == default_template().source
    for messages in CONVERSATIONS:  # multi-turn, with and without a system prompt
        whole = _ids(hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=False))
        assert whole == renderer.example(messages).ids.tolist()
        for end, message in enumerate(messages):
            if message["role"] == "user":  # the prompt for each reply
                prompt = _ids(hf.apply_chat_template(messages[:end + 1], tokenize=True, add_generation_prompt=True))
                assert prompt == renderer.prompt_ids(messages[:end + 1])


def test_the_export_stops_at_the_end_of_turn_in_transformers(chat_run, tmp_path):
    lm = decoderlm.load(chat_run)
    renderer = lm.chat_renderer()
    end_of_turn = renderer.stop_token_ids()[0]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = renderer.prompt_ids(messages)
    # Make <|im_end|> the greedy choice at the second step: its head row becomes twice that of the
    # token chosen there, so both libraries must end the reply after one token.
    first = complete(lm, [prompt], max_new_tokens=2, temperature=0)[0].token_ids
    with torch.no_grad():
        head = lm.model.lm_head.weight
        head[end_of_turn] = 2 * head[first[1]]
    out = tmp_path / "hf"
    lm.save(out, format="hf")
    generation = json.loads((out / "generation_config.json").read_text())
    assert end_of_turn in generation["eos_token_id"]
    ours = complete(lm, [prompt], max_new_tokens=8, temperature=0, eos_token_id=renderer.stop_token_ids())[0]
    assert ours.finish_reason == "eos" and ours.token_ids == first[:1]
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    theirs = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt):].tolist()
    assert theirs == first[:1] + [end_of_turn]  # transformers stops at the same token (and keeps it)
    pipe = transformers.pipeline("text-generation", model=str(out), device="cpu")
    reply = pipe(messages, max_new_tokens=8, do_sample=False)[0]["generated_text"][-1]
    assert reply == {"role": "assistant", "content": ours.text}


LLAMA3_LIKE = ("{{ bos_token }}{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|eot|>"
               "{% endfor %}{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")


def test_an_imported_checkpoint_uses_its_own_template(tmp_path):
    tokenizer = small_bpe(("<|start|>", "<|eot|>", "<|bos|>"))
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.tok, bos_token="<|bos|>",
                                                  eos_token="[eos]", pad_token="[pad]")
    hf_tok.chat_template = LLAMA3_LIKE
    config = transformers.LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=128)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    hf_tok.save_pretrained(tmp_path)
    lm = decoderlm.load(tmp_path)
    assert lm.chat_template is not None and lm.chat_template.source == LLAMA3_LIKE
    renderer = lm.chat_renderer()
    assert renderer.variables["bos_token"] == "<|bos|>"  # from the checkpoint's tokenizer_config.json
    assert renderer.end_of_turn == "<|eot|>"
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for messages in CONVERSATIONS:
        assert renderer.text(messages) == hf.apply_chat_template(messages, tokenize=False)
        assert renderer.example(messages).ids.tolist() == _ids(hf.apply_chat_template(messages, tokenize=True))
