"""`decoderlm chat RUN_DIR`: type a line, watch the model continue the conversation as it generates.

The models trained here are plain language models without a chat template, so the conversation is
one growing text: every line you type is appended (with a newline) and the model continues it.
Reads lines until end of input or /quit; /reset forgets the conversation.
"""

from __future__ import annotations

import sys

from decoderlm.commands.generate import add_sampling_flags, load_model, one_line_warnings, sampling_kwargs

HELP = "type a line and press enter; /reset forgets the conversation, /quit (or end of input) leaves"


def register(sub):
    p = sub.add_parser("chat", help="an interactive prompt that streams the model's replies")
    p.add_argument("model", metavar="RUN_DIR", help="a decoderlm run directory or a Hugging Face model directory")
    add_sampling_flags(p, max_new_tokens=200, temperature=0.8)
    p.add_argument("--no-history", action="store_true", help="each line is a fresh prompt (no conversation)")
    p.set_defaults(func=chat_command)


def chat_command(args) -> int:
    from decoderlm.generate.text import stream_text

    lm = load_model(args)
    kwargs = sampling_kwargs(args)
    seed = kwargs.pop("seed")
    interactive = sys.stdin.isatty()
    print(f"decoderlm chat: {args.model}; {HELP}", file=sys.stderr, flush=True)
    history, turn = "", 0
    with one_line_warnings():
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:  # end of input
                break
            line = line.rstrip("\r\n")
            command = line.strip()
            if command in ("/quit", "/exit"):
                break
            if command == "/reset":
                history = ""
                print("(conversation forgotten)", file=sys.stderr, flush=True)
                continue
            if not command:
                continue
            prompt = (history if not args.no_history else "") + line + "\n"
            pieces = []
            turn_seed = None if seed is None else seed + turn  # reproducible, yet each turn differs
            for piece in stream_text(lm, prompt, max_new_tokens=args.max_new_tokens, seed=turn_seed, **kwargs):
                pieces.append(piece)
                print(piece, end="", flush=True)
            print(flush=True)
            turn += 1
            reply = "".join(pieces)
            history = prompt + reply + ("" if reply.endswith("\n") else "\n")
    return 0
