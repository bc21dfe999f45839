"""Chat templates in the server: transformers' Jinja dialect in a sandbox (decoderlm.chat.template),
and where the server finds a template (a --chat-template file, else the model's own, else none)."""

import pytest

pytest.importorskip("jinja2")

from decoderlm import DecoderLMError  # noqa: E402
from decoderlm.chat.template import ChatTemplate  # noqa: E402
from decoderlm.lm import LanguageModel  # noqa: E402
from decoderlm.serve.server import chat_renderer_for  # noqa: E402


class Tokenizer:
    eos_id = 1

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return {1: "</s>"}[ids[0]]


STRICT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
          "{{ raise_exception('the system message must come first') }}{% endif %}"
          "[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
          "{% if add_generation_prompt %}[assistant] {% endif %}")


def _model(template=None):
    return LanguageModel(model=None, config=None, tokenizer=Tokenizer(), chat_template=template)


def test_the_model_template_or_a_file_or_none(tmp_path):
    file = tmp_path / "t.jinja"
    file.write_text("{% for m in messages %}{{ m['content'] }}|{% endfor %}")
    with_template, without = _model(ChatTemplate(STRICT)), _model()
    messages = [{"role": "user", "content": "hi"}]
    assert chat_renderer_for(without) is None  # chat requests are then refused with a 400
    assert chat_renderer_for(with_template).text(messages, add_generation_prompt=True) == "[user] hi</s>[assistant] "
    assert chat_renderer_for(with_template).text(messages) == "[user] hi</s>"
    assert chat_renderer_for(with_template, file).text(messages, add_generation_prompt=True) == "hi|"  # the file wins
    assert chat_renderer_for(without, file).prompt_ids(messages) == [ord(c) for c in "hi|"]


def test_template_errors():
    template = ChatTemplate(STRICT)
    with pytest.raises(DecoderLMError, match="must come first"):
        template.render([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    with pytest.raises(DecoderLMError, match="failed to render"):  # the sandbox refuses to reach into Python objects
        ChatTemplate("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}").render([])
    with pytest.raises(DecoderLMError, match="syntax error"):
        ChatTemplate("{% for m in messages %}")
