"""Chat templates: transformers' Jinja dialect in a sandbox, and where the server finds a template."""

from types import SimpleNamespace

import pytest

pytest.importorskip("jinja2")

from decoderlm import DecoderLMError  # noqa: E402
from decoderlm.serve.chat import ChatTemplate, ChatTemplateError, chat_template_for  # noqa: E402


class Tokenizer:
    eos_id = 1

    def decode(self, ids):
        return {1: "</s>"}[ids[0]]


STRICT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
          "{{ raise_exception('the system message must come first') }}{% endif %}"
          "[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
          "{% if add_generation_prompt %}[assistant] {% endif %}")


def test_the_model_template_or_a_file_or_none(tmp_path):
    file = tmp_path / "t.jinja"
    file.write_text("{% for m in messages %}{{ m['content'] }}|{% endfor %}")
    with_template = SimpleNamespace(tokenizer=Tokenizer(), chat_template=STRICT)
    without = SimpleNamespace(tokenizer=Tokenizer())
    messages = [{"role": "user", "content": "hi"}]
    assert chat_template_for(without) is None  # chat requests are then refused with a 400
    assert chat_template_for(with_template).render(messages) == "[user] hi</s>[assistant] "
    assert chat_template_for(with_template).render(messages, add_generation_prompt=False) == "[user] hi</s>"
    assert chat_template_for(with_template, file).render(messages) == "hi|"  # the file wins


def test_template_errors():
    template = ChatTemplate(STRICT)
    with pytest.raises(ChatTemplateError, match="must come first"):
        template.render([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    with pytest.raises(ChatTemplateError):  # the sandbox refuses to reach into Python objects
        ChatTemplate("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}").render([])
    with pytest.raises(DecoderLMError, match="not a valid Jinja template"):
        ChatTemplate("{% for m in messages %}")
