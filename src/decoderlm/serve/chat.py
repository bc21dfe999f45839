"""Chat templates: a conversation (a list of {"role", "content"} messages) rendered into one prompt.

Templates are Jinja in transformers' dialect (`messages`, `add_generation_prompt`, `bos_token`,
`eos_token`, `raise_exception`), rendered in jinja2's immutable sandbox, as transformers does, so a
template cannot reach into the server. Where a model's template comes from is decided in one place,
`chat_template_for`: a file given with `--chat-template`, else the model's own `chat_template`
(a string, once decoderlm's models carry one), else none, and chat requests are refused.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from decoderlm.errors import DecoderLMError

MAX_TEMPLATE_BYTES = 1 << 20


class ChatTemplateError(ValueError):
    """The conversation cannot be rendered (the template refused it)."""


class ChatTemplate:
    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "", origin: str = "the chat template"):
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateSyntaxError as err:
            raise DecoderLMError(f"{origin} is not a valid Jinja template: line {err.lineno}: {err.message}") from None
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        import jinja2

        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as err:  # undefined names, sandbox refusals: the template's fault
            raise ChatTemplateError(f"the chat template failed on these messages: {err}") from None


def _raise(message: str):
    raise ChatTemplateError(message)


def read_template_file(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise DecoderLMError(f"chat template {path} does not exist (give a Jinja file)")
    if path.stat().st_size > MAX_TEMPLATE_BYTES:
        raise DecoderLMError(f"chat template {path} is larger than {MAX_TEMPLATE_BYTES} bytes; is it the right file?")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DecoderLMError(f"chat template {path} is not UTF-8 text") from None


def chat_template_for(lm, path: str | Path | None = None) -> ChatTemplate | None:
    """The template chat requests use: `path` if given, else the model's own, else None."""
    if path is not None:
        source, origin = read_template_file(path), f"chat template {path}"
    else:
        source, origin = getattr(lm, "chat_template", None), "the model's chat template"
    if not source:
        return None
    tokenizer = lm.tokenizer
    return ChatTemplate(source, bos_token=_token_text(tokenizer, "bos_id"), eos_token=_token_text(tokenizer, "eos_id"),
                        origin=origin)


def _token_text(tokenizer, attribute: str) -> str:
    token_id = getattr(tokenizer, attribute, None)
    return "" if token_id is None else tokenizer.decode([token_id])
