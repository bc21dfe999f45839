"""`decoderlm serve RUN_OR_HF_DIR`: an OpenAI-compatible HTTP server with a web playground (docs/serving.md)."""

from __future__ import annotations

import os

from decoderlm.errors import DecoderLMError

API_KEY_ENV = "DECODERLM_API_KEY"


def register(sub):
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API, with a web playground")
    p.add_argument("model", metavar="RUN_OR_HF_DIR", help="a decoderlm run directory or a Hugging Face model directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV} if set)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="most completions decoded together (default 8); more wait for a free row")
    p.add_argument("--compile", action="store_true",
                   help="decode through a compiled step (faster per token; compiles for tens of seconds at start)")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="a Jinja chat template (transformers' format) for /v1/chat/completions")
    p.add_argument("--model-name", default=None, help="the model id clients use (default: the directory's name)")
    p.add_argument("--device", default=None, help="cpu (default), cuda, mps ...")
    p.add_argument("--dtype", default=None,
                   help="float32, bfloat16 or float16 (default: bfloat16 where the CPU or GPU runs it natively)")
    p.add_argument("--quantize", choices=("int8", "int4"), default=None,
                   help="quantize the linear layers' weights while loading (see `decoderlm quantize`)")
    p.set_defaults(func=serve_command)


def serve_command(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise DecoderLMError("serving needs FastAPI and uvicorn: pip install 'decoderlm[serve]'") from None
    from decoderlm.commands.generate import load_model, one_line_warnings
    from decoderlm.chat.template import read_template_file
    from decoderlm.serve.server import listen, serve

    if args.max_batch < 1:
        raise DecoderLMError(f"--max-batch must be a whole number >= 1, got {args.max_batch}")
    if args.chat_template is not None:
        read_template_file(args.chat_template)  # a missing file is reported before the model loads
    sock = listen(args.host, args.port)
    try:
        lm = load_model(args)
        with one_line_warnings():
            serve(lm, sock, host=args.host, api_key=args.api_key, max_batch=args.max_batch, compile=args.compile,
                  chat_template=args.chat_template, model_id=args.model_name)
    finally:
        sock.close()
    return 0
