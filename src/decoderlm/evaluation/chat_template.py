"""A model directory's chat template (Hugging Face convention), rendered with jinja2.

The template is `chat_template.jinja` or the "chat_template" of tokenizer_config.json. decoderlm's
own models have none; imported instruction-tuned checkpoints often do. transformers is an optional
extra, so the rendering (a sandboxed jinja2 environment with the variables transformers passes:
messages, add_generation_prompt, bos_token, eos_token) is done here with jinja2, which lm-eval needs anyway.
"""

from __future__ import annotations

import json
from pathlib import Path

from decoderlm.errors import DecoderLMError


def read_chat_template(directory) -> str | None:
    """The template text of a model directory, or None if it has none."""
    if directory is None:
        return None
    directory = Path(directory)
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = _tokenizer_config(directory).get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def special_tokens(directory) -> dict[str, str]:
    """bos_token / eos_token strings from tokenizer_config.json, as a template expects them."""
    config = _tokenizer_config(Path(directory)) if directory is not None else {}
    tokens = {}
    for name in ("bos_token", "eos_token"):
        value = config.get(name)
        if isinstance(value, dict):  # an AddedToken written out as {"content": ...}
            value = value.get("content")
        tokens[name] = value if isinstance(value, str) else ""
    return tokens


def render_chat(template: str, messages: list[dict], *, add_generation_prompt: bool, tokens: dict[str, str]) -> str:
    """The conversation as text. Without a generation prompt the last message is left open
    (transformers' continue_final_message): the text ends where that message's content ends."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
        text = env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                **tokens)
    except TemplateError as err:
        raise DecoderLMError(f"the model's chat template failed: {err}") from None
    if not add_generation_prompt and messages:
        final = str(messages[-1].get("content", "")).strip()
        cut = text.rfind(final) if final else -1
        if cut >= 0:
            text = text[: cut + len(final)]
    return text


def _tokenizer_config(directory: Path) -> dict:
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DecoderLMError(f"cannot read {path}: {err}") from None
    return data if isinstance(data, dict) else {}
