"""Loss masks: which tokens a conversation teaches (replies and their end-of-turn token, by default),
checked by hand, against transformers' `{% generation %}` assistant mask, and through a tiny model:
the loss is the mean over the reply tokens and masked positions get no gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from chat_support import CONVERSATIONS, as_transformers, chatml_bpe, small_bpe

from decoderlm import DecoderLM, ModelConfig
from decoderlm.chat import IGNORE_INDEX, ChatRenderer, ChatTemplate, default_template
from decoderlm.chat.packing import padded_batch
from decoderlm.errors import DecoderLMError

CHATML_WITH_GENERATION = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# The reply follows a space that BPE merges into the reply's first word: a boundary inside a token.
SPACED = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ 'Assistant: ' + m['content'] + eos_token + '\\n' }}"
          "{% else %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}")


def _taught(renderer, example) -> list[str]:
    """The runs of consecutive loss tokens, decoded."""
    runs, current = [], []
    for token, on in zip(example.ids.tolist(), example.loss_mask.tolist()):
        if on:
            current.append(token)
        elif current:
            runs.append(renderer.tokenizer.decode(current))
            current = []
    return runs + ([renderer.tokenizer.decode(current)] if current else [])


def test_replies_and_their_end_of_turn_are_taught_by_hand():
    renderer = ChatRenderer(default_template(), chatml_bpe())
    conv = CONVERSATIONS[1]
    assert _taught(renderer, renderer.example(conv)) == ["Hello there!<|im_end|>", "Paris.<|im_end|>"]
    assert _taught(renderer, renderer.example(conv, loss_on="last")) == ["Paris.<|im_end|>"]
    everything = renderer.example(conv, loss_on="all")
    assert everything.loss_mask.all() and _taught(renderer, everything) == [renderer.text(conv)]
    spaced = renderer.example(CONVERSATIONS[2])  # leading/trailing whitespace inside replies is taught too
    assert _taught(renderer, spaced) == ["desserts<|im_end|>", "\n tuo  decaps  <|im_end|>", "🙂 édöcïnü<|im_end|>"]
    assert renderer.stats.straddling_boundaries == 0
    with pytest.raises(DecoderLMError, match="loss_on must be one of"):
        renderer.example(conv, loss_on="user")


def test_mask_equals_transformers_generation_mask():
    tok = chatml_bpe()
    hf = as_transformers(tok, CHATML_WITH_GENERATION)
    renderer = ChatRenderer(ChatTemplate(CHATML_WITH_GENERATION), tok)
    for conv in CONVERSATIONS:
        out = hf.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        example = renderer.example(conv)
        assert example.ids.tolist() == list(out["input_ids"])
        assert example.loss_mask.astype(int).tolist() == list(out["assistant_masks"])


def test_a_boundary_inside_a_token_puts_that_token_in_the_loss():
    tok = small_bpe()
    renderer = ChatRenderer(ChatTemplate(SPACED), tok)
    example = renderer.example(CONVERSATIONS[0])
    assert _taught(renderer, example) == [" Hello there![eos]"]
    assert renderer.stats.straddling_boundaries == 1


def test_a_template_that_rewrites_earlier_turns_is_refused():
    # Shows only the latest reply, as reasoning templates do with earlier thoughts.
    rewriting = ChatTemplate("{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
                             "{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endif %}{% endfor %}")
    with pytest.raises(DecoderLMError, match="not prefix-stable"):
        ChatRenderer(rewriting, small_bpe()).example(CONVERSATIONS[1])


def test_loss_is_the_mean_over_reply_tokens_and_masked_positions_get_no_gradient():
    torch.manual_seed(0)
    tok = chatml_bpe()
    renderer = ChatRenderer(default_template(), tok)
    example = renderer.example(CONVERSATIONS[1])
    model = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, max_seq_len=128, d_model=32, n_layer=2, n_head=4,
                                  position="rope", ffn="swiglu", norm="rmsnorm"))
    batch = padded_batch([example], [0])
    embedded = {}

    def keep_embeddings(module, args, out):
        out.retain_grad()
        embedded["x"] = out

    model.tok_emb.register_forward_hook(keep_embeddings)
    logits = model(batch.idx)  # (1, T, V)
    logits.retain_grad()
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), batch.targets.view(-1), ignore_index=IGNORE_INDEX)

    # By hand: -log p(token j | tokens < j) for each taught token j, averaged.
    ids, mask = example.ids.tolist(), example.loss_mask.tolist()
    log_probs = logits[0].double().log_softmax(-1)
    terms = [-log_probs[j - 1, ids[j]] for j in range(1, len(ids)) if mask[j]]
    assert len(terms) == 8  # "Hello there!<|im_end|>" and "Paris.<|im_end|>": 4 + 4 tokens
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-6)

    loss.backward()
    taught = batch.targets[0] != IGNORE_INDEX
    assert torch.all(logits.grad[0, ~taught] == 0) and torch.all(logits.grad[0, taught].abs().sum(-1) > 0)
    after_last = int(taught.nonzero().max()) + 1  # inputs after the last taught position influence no loss
    grad = embedded["x"].grad[0]
    assert torch.all(grad[after_last:] == 0) and grad[:after_last].abs().sum() > 0


def test_char_tokenizer_reads_the_template_tokens_as_single_ids():
    from chat_support import CORPUS

    from decoderlm.chat import add_special_tokens
    from decoderlm.data.tokenizers import train_tokenizer

    tok, _ = add_special_tokens(train_tokenizer("char", [CORPUS], 100), default_template().special_tokens)
    renderer = ChatRenderer(default_template(), tok)
    example = renderer.example([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}])
    assert _taught(renderer, example) == ["Hello there.<|im_end|>"]
    assert int(example.loss_mask.sum()) == len("Hello there.") + 1
    assert renderer.stop_token_ids() == [tok.tok.token_to_id("<|im_end|>"), tok.eos_id]


def test_a_tokenizer_without_offsets_is_encoded_piece_by_piece():
    from decoderlm.data.tokenizers import ToyTokenizer

    toy = ToyTokenizer()  # StatQuest's task as a chat: the reply to "what is statquest" is "awesome"
    template = ChatTemplate("{% for m in messages %}{{ m['content'] + ' ' + eos_token + ' ' }}{% endfor %}")
    renderer = ChatRenderer(template, toy)
    example = renderer.example([{"role": "user", "content": "what is statquest"},
                                {"role": "assistant", "content": "awesome"}])
    assert toy.decode(example.ids) == "what is statquest <EOS> awesome <EOS>"
    assert example.loss_mask.tolist() == [False] * 4 + [True, True]
    assert renderer.prompt_ids([{"role": "user", "content": "what is statquest"}]) == example.ids[:4].tolist()
    assert renderer.end_of_turn == "<EOS>" and renderer.stop_token_ids() == [toy.eos_id]


def test_trim_history_drops_the_oldest_exchanges_and_keeps_the_system_prompt():
    from decoderlm.chat import trim_history

    renderer = ChatRenderer(default_template(), chatml_bpe())
    conv = CONVERSATIONS[2][:-1]  # system, then three user turns and two replies; the latest is a user turn
    full = len(renderer.prompt_ids(conv))
    assert trim_history(renderer, conv, full) == (conv, 0)
    trimmed, dropped = trim_history(renderer, conv, full - 1)
    assert dropped == 2 and trimmed == [conv[0]] + conv[3:]
    latest_only = len(renderer.prompt_ids([conv[0], conv[-1]]))
    assert trim_history(renderer, conv, latest_only) == ([conv[0], conv[-1]], 4)
    with pytest.raises(DecoderLMError, match="the latest message does not fit the context"):
        trim_history(renderer, conv, latest_only - 1)
