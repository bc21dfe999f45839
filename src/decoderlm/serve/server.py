"""Putting the server together (`build`) and running it on a socket with uvicorn (`serve`)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
import threading
import time
from pathlib import Path

from decoderlm.errors import DecoderLMError
from decoderlm.serve.schemas import Limits


def build(lm, *, api_key: str | None = None, max_batch: int = 8, compile: bool = False,
          chat_template: str | Path | None = None, limits: Limits = Limits(), model_id: str | None = None):
    """(FastAPI app, started Engine) serving `lm` (a LanguageModel with a tokenizer)."""
    from decoderlm.serve.app import create_app
    from decoderlm.serve.engine import Engine
    from decoderlm.serve.handlers import ServeContext

    if lm.tokenizer is None:
        raise DecoderLMError("this model directory has no tokenizer files; the server needs one to read and write text")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise DecoderLMError(f"--max-batch must be a whole number >= 1, got {max_batch}")
    if api_key is not None and not api_key.strip():
        raise DecoderLMError("--api-key must not be empty")
    template = chat_renderer_for(lm, chat_template)
    engine = Engine(lm.model, lm.tokenizer, max_batch=max_batch, max_waiting=limits.max_waiting, compile=compile)
    engine.start()
    name = model_id or (lm.path.name if lm.path is not None else "decoderlm")
    ctx = ServeContext(lm=lm, engine=engine, model_id=name, template=template, limits=limits, api_key=api_key)
    return create_app(ctx), engine


def chat_renderer_for(lm, path: str | Path | None = None):
    """What chat requests are rendered with (a `decoderlm.chat.ChatRenderer`): the template file
    `path` when given, else the model's own (its run's chat_template.jinja, an HF checkpoint's
    tokenizer_config.json), else None, and chat requests are refused."""
    from decoderlm.chat.template import read_template_file

    return lm.chat_renderer(read_template_file(path) if path is not None else None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_address_warning(host: str, api_key: str | None) -> str | None:
    if is_loopback(host) or api_key is not None:
        return None
    return f"listening on {host} without --api-key: anyone who can reach this machine can use the model"


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, opened before the model loads, so a taken port is reported at once."""
    if not 0 <= port <= 65535:
        raise DecoderLMError(f"--port must be in 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise DecoderLMError(f"cannot resolve --host {host!r}: {err.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)  # connections wait in the backlog while the model loads
    except OSError as err:
        sock.close()
        raise DecoderLMError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    return sock


def serve(lm, sock: socket.socket, *, host: str, api_key: str | None, **settings) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM end it cleanly)."""
    import uvicorn

    warning = open_address_warning(host, api_key)
    if warning:
        print(f"decoderlm serve: warning: {warning}", file=sys.stderr, flush=True)
    app, engine = build(lm, api_key=api_key, **settings)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    ctx = app.state.ctx
    print(f"decoderlm serve: {ctx.model_id} (context {ctx.context}, batch up to {engine.max_batch}, "
          f"KV cache {engine.runner.cache_bytes() / 2**20:.0f} MiB) on http://{shown}:{port}  "
          f"(playground: /, API: /v1)", file=sys.stderr, flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="info", lifespan="off")).run(sockets=[sock])
    finally:
        engine.stop()
        sock.close()


@contextlib.contextmanager
def running(lm, *, log_level: str = "warning", **settings):
    """Serve `lm` on 127.0.0.1:<a free port> in a background thread (for tests and benchmarks);
    yields (base URL, engine) and shuts everything down afterwards."""
    import uvicorn

    app, engine = build(lm, **settings)
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="decoderlm-http", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", engine
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        engine.stop()
        sock.close()
