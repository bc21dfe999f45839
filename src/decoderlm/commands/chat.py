"""`decoderlm chat RUN_DIR`: type a line, watch the model continue the conversation as it generates.

A model with a chat template (a chat fine-tune's chat_template.jinja, an HF checkpoint's template)
gets the conversation as messages through its template: each line is a user turn, each reply ends
at the template's end-of-turn token, and when the conversation outgrows the context its oldest turns
are dropped (said once). A plain language model without one gets one growing text: every line you
type is appended (with a newline) and the model continues it.
Reads lines until end of input (Ctrl-D) or /quit; /reset forgets the conversation. On a terminal,
lines are edited and recalled with readline (arrow keys, history); Ctrl-C during a reply stops that
reply and returns to the prompt, Ctrl-C at the prompt leaves.
"""

from __future__ import annotations

import sys

from decoderlm.commands.generate import (add_sampling_flags, add_system_flag, chat_renderer,
                                         load_model, one_line_warnings, sampling_kwargs)
from decoderlm.errors import DecoderLMError

HELP = ("type a line and press enter; Ctrl-C stops a reply; /reset forgets the conversation, "
        "/quit or Ctrl-D leaves")


def register(sub):
    p = sub.add_parser("chat", help="an interactive prompt that streams the model's replies")
    p.add_argument("model", metavar="RUN_DIR", help="a decoderlm run directory or a Hugging Face model directory")
    add_sampling_flags(p, max_new_tokens=200, temperature=0.8)
    p.add_argument("--no-history", action="store_true", help="each line is a fresh prompt (no conversation)")
    add_system_flag(p)
    p.set_defaults(func=chat_command)


def chat_command(args) -> int:
    lm = load_model(args)
    kwargs = sampling_kwargs(args)
    seed = kwargs.pop("seed")
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401 - importing it gives input() line editing and history
        except ImportError:  # not built on this platform (Windows): plain input() still works
            pass

    conversation = _Conversation(lm, args) if lm.chat_template is not None or args.system is not None else None
    print(f"decoderlm chat: {args.model}; {HELP}", file=sys.stderr, flush=True)
    history, turn = "", 0
    with one_line_warnings():
        while (line := _read_line(interactive)) is not None:
            command = line.strip()
            if command in ("/quit", "/exit"):
                break
            if command == "/reset":
                history = ""
                if conversation is not None:
                    conversation.reset()
                print("(conversation forgotten)", file=sys.stderr, flush=True)
                continue
            if not command:
                continue
            turn_seed = None if seed is None else seed + turn  # reproducible, yet each turn differs
            turn += 1
            if conversation is not None:
                conversation.turn(line, args.max_new_tokens, dict(kwargs, seed=turn_seed))
                continue
            prompt = (history if not args.no_history else "") + line + "\n"
            reply = _reply(lm, prompt, args.max_new_tokens, dict(kwargs, seed=turn_seed))
            history = prompt + reply + ("" if reply.endswith("\n") else "\n")
    return 0


class _Conversation:
    """Messages through the model's chat template, kept within the context."""

    def __init__(self, lm, args):
        self.lm, self.renderer = lm, chat_renderer(lm, args)
        self.start = [{"role": "system", "content": args.system}] if args.system is not None else []
        self.keep_history = not args.no_history
        self.messages = list(self.start)
        self.said_trimmed = False

    def reset(self) -> None:
        self.messages = list(self.start)

    def turn(self, line: str, max_new_tokens: int, kwargs: dict) -> None:
        from decoderlm.chat.render import trim_history

        if not self.keep_history:
            self.reset()
        context = self.lm.config.max_seq_len
        # Room for the reply: up to max_new_tokens, but never more than half the context.
        budget = context - min(max_new_tokens, context // 2)
        try:
            self.messages, dropped = trim_history(self.renderer, self.messages + [{"role": "user", "content": line}],
                                                  budget)
        except DecoderLMError as err:  # this line alone is too long: say so and keep chatting
            print(f"({err})", file=sys.stderr, flush=True)
            return
        if dropped and not self.said_trimmed:
            print(f"(the conversation outgrew the model's context of {context} tokens: its oldest turns are "
                  f"dropped from now on)", file=sys.stderr, flush=True)
            self.said_trimmed = True
        ids = self.renderer.prompt_ids(self.messages)
        reply = _reply(self.lm, ids, max_new_tokens, dict(kwargs, eos_token_id=self.renderer.stop_token_ids()))
        self.messages.append({"role": "assistant", "content": reply})


def _read_line(interactive: bool) -> str | None:
    """The next line typed (without its newline), or None to leave: end of input or Ctrl-C."""
    try:
        return input("> " if interactive else "")
    except (EOFError, KeyboardInterrupt):
        if interactive:
            print(flush=True)  # leave the shell's prompt on a line of its own
        return None


def _reply(lm, prompt, max_new_tokens: int, kwargs: dict) -> str:
    """Stream the model's continuation of `prompt`; Ctrl-C stops it. Returns the text shown."""
    from decoderlm.generate.text import stream_text

    pieces = []
    stream = stream_text(lm, prompt, max_new_tokens=max_new_tokens, **kwargs)
    try:
        for piece in stream:
            pieces.append(piece)
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        stream.close()  # ends generation (a no-op if the interrupt already ended it)
        print(flush=True)
        print("(reply stopped)", file=sys.stderr, flush=True)
        return "".join(pieces)
    print(flush=True)
    return "".join(pieces)
