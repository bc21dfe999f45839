"""Chat templates: Jinja text that turns a list of messages into the model's prompt format.

Rendered the way transformers' `apply_chat_template` renders them, so that a template means the same
thing here and in an exported checkpoint: a sandboxed, immutable Jinja environment with trim_blocks
and lstrip_blocks, the loopcontrols extension, the globals `raise_exception` and `strftime_now`, a
`tojson` filter that keeps non-ASCII text, and the variables `messages`, `add_generation_prompt`,
`tools`/`documents` (None) and the tokenizer's special tokens (`bos_token`, `eos_token`, ...).

A template comes from the default (ChatML), a user's file, or a saved checkpoint: a
`chat_template.jinja` file beside the tokenizer, or the "chat_template" entry of its
tokenizer_config.json (a string, or a list of {"name", "template"}).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from decoderlm.errors import DecoderLMError

TEMPLATE_FILE = "chat_template.jinja"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


@dataclass(frozen=True)
class ChatTemplate:
    """Jinja source, where it came from, and the special tokens it writes that the tokenizer must
    know as single ids (added to a tokenizer that lacks them; see `vocab.add_special_tokens`)."""

    source: str
    origin: str = "custom"
    special_tokens: tuple[str, ...] = ()

    def __post_init__(self):
        _compiled(self.source, self.origin)  # a syntax error is reported when the template is read

    def render(self, messages, *, add_generation_prompt: bool = False, **variables) -> str:
        """The conversation as text; `variables` are bos_token, eos_token and the like."""
        template = _compiled(self.source, self.origin)
        try:
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                   tools=None, documents=None, **variables)
        except DecoderLMError:
            raise
        except Exception as err:  # noqa: BLE001 - anything a template raises is the template's failure
            import jinja2

            reason = str(err) if isinstance(err, jinja2.TemplateError) else f"{type(err).__name__}: {err}"
            raise DecoderLMError(f"chat template ({self.origin}) failed to render: {_one_line(reason)}") from None


def default_template() -> ChatTemplate:
    """ChatML: <|im_start|>role\\ncontent<|im_end|>\\n per message, `<|im_start|>assistant\\n` to prompt."""
    return ChatTemplate(CHATML, origin="default ChatML template", special_tokens=CHATML_TOKENS)


def read_template_file(path, special_tokens=()) -> ChatTemplate:
    """A template from a user's Jinja file; `special_tokens`: tokens it writes that must be single ids."""
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DecoderLMError(f"cannot read chat template {path}: {err}") from None
    if not source.strip():
        raise DecoderLMError(f"chat template {path} is empty")
    return ChatTemplate(source, origin=str(path), special_tokens=tuple(special_tokens))


def read_saved_template(directory, name: str = "default") -> ChatTemplate | None:
    """The template saved with a tokenizer in `directory` (a decoderlm run or a Hugging Face
    checkpoint), or None when it has none. `name` picks one of several named templates."""
    directory = Path(directory)
    jinja_file = directory / TEMPLATE_FILE
    if jinja_file.is_file():
        return read_template_file(jinja_file)
    entry = hf_tokenizer_config(directory).get("chat_template")
    where = str(directory / HF_TOKENIZER_CONFIG)
    if entry is None:
        return None
    if isinstance(entry, str):
        return ChatTemplate(entry, origin=where)
    if isinstance(entry, list):
        named = {item.get("name"): item.get("template") for item in entry if isinstance(item, dict)}
        if name in named and isinstance(named[name], str):
            return ChatTemplate(named[name], origin=f"{where} ({name})")
        raise DecoderLMError(f"{where} has no chat template named {name!r}; it has: {', '.join(map(str, named))}")
    raise DecoderLMError(f"{where}: \"chat_template\" must be a string or a list of {{\"name\", \"template\"}}")


def save_template(template: ChatTemplate, directory) -> Path:
    """Write `chat_template.jinja` into `directory` (atomically), where `read_saved_template` finds it."""
    from decoderlm.fileio import bytes_writer, write_file_atomic

    path = Path(directory) / TEMPLATE_FILE
    write_file_atomic(path, bytes_writer(template.source.encode("utf-8")))
    return path


def hf_tokenizer_config(directory) -> dict:
    """A Hugging Face tokenizer_config.json as a dict ({} when there is none)."""
    path = Path(directory) / HF_TOKENIZER_CONFIG
    if not path.is_file():
        return {}
    from decoderlm.checkpoint_io import read_json

    return read_json(path)


def special_token_variables(tokenizer, directory=None) -> dict[str, str]:
    """bos_token, eos_token, ... for templates, as transformers passes them: only those that are set.
    From an HF tokenizer_config.json in `directory` when it names them, else from the tokenizer."""
    config = hf_tokenizer_config(directory) if directory is not None else {}
    found = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = config.get(name)
        if isinstance(value, dict):  # a serialised AddedToken
            value = value.get("content")
        if isinstance(value, str):
            found[name] = value
    for name in ("eos", "pad"):
        token_id = getattr(tokenizer, f"{name}_id", None)
        if f"{name}_token" not in found and token_id is not None:
            found[f"{name}_token"] = _token_text(tokenizer, token_id)
    return found


def _token_text(tokenizer, token_id: int) -> str:
    hf = getattr(tokenizer, "tok", None)  # a `tokenizers.Tokenizer`: its token string, not decoded bytes
    if hf is not None and hf.id_to_token(token_id) is not None:
        return hf.id_to_token(token_id)
    return tokenizer.decode([token_id])


@lru_cache(maxsize=32)
def _compiled(source: str, origin: str):
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters, which would change the rendered text.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols, _generation_tag()])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise DecoderLMError(f"chat template ({origin}) has a syntax error at line {err.lineno}: {_one_line(err.message)}") from None


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _generation_tag():
    """`{% generation %}...{% endgeneration %}`, which some templates wrap around replies for
    transformers' assistant mask: rendered as its body (replies are found by prefixes here)."""
    import jinja2
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    return GenerationTag
