"""`decoderlm chat` as a person at a terminal uses it, in a pseudo-terminal: line editing and history
through readline, Ctrl-C stops one reply only, Ctrl-C at the prompt and Ctrl-D leave cleanly."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time

import pytest
import torch

from decoderlm import DecoderLM, ModelConfig
from decoderlm.data.tokenizers import train_tokenizer
from decoderlm.lm import LanguageModel

TEXT = "the quick brown fox jumps over the lazy dog. " * 20


@pytest.fixture(scope="module")
def endless_run(tmp_path_factory):
    """A tiny char-level model that never emits its end-of-text token (its head's bias forbids it),
    so a reply goes on until max_new_tokens or an interrupt."""
    tok = train_tokenizer("char", [TEXT], 64)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.vocab_size, max_seq_len=32, d_model=16, n_layer=1, n_head=2,
                         position="rope", norm="rmsnorm", ffn="swiglu", lm_head_bias=True)
    model = DecoderLM(config).eval()
    with torch.no_grad():
        model.lm_head.bias[tok.eos_id] = -1e4
    return str(LanguageModel.from_model(model, tok).save(tmp_path_factory.mktemp("chat") / "run"))


def _chat_args(run: str, max_new_tokens: int) -> list[str]:
    return [sys.executable, "-m", "decoderlm", "chat", run, "--max-new-tokens", str(max_new_tokens),
            "--temperature", "0"]


class Terminal:
    """The chat command on the slave side of a pseudo-terminal (its controlling terminal, so the
    keys ^C and ^D act as they do for a person), read and typed from the master side."""

    def __init__(self, argv: list[str]):
        env = {**os.environ, "TERM": "xterm", "PYTHONUNBUFFERED": "1"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec at once (nothing of pytest runs here)
            # A person's shell starts the command with Ctrl-C's default action; pytest may have been
            # started in the background of a script, where SIGINT is ignored and exec keeps that.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execvpe(argv[0], argv, env)
        self.output = b""

    def read_until(self, marker: bytes, count: int = 1, timeout: float = 60) -> bytes:
        """Everything shown so far, once `marker` has appeared `count` times."""
        deadline = time.monotonic() + timeout
        while self.output.count(marker) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} within {timeout} s; the terminal shows {self.output[-500:]!r}")
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the terminal closed before {marker!r}: {self.output[-500:]!r}")
                self.output += chunk
        return self.output

    def read_more(self, n_bytes: int, timeout: float = 60) -> None:
        target, deadline = len(self.output) + n_bytes, time.monotonic() + timeout
        while len(self.output) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {n_bytes} more bytes within {timeout} s: {self.output[-500:]!r}")
            self._drain(0.5)

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def exit_code(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._drain()
                return os.waitstatus_to_exitcode(status)
            self._drain(0.1)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"chat did not end; the terminal shows {self.output[-500:]!r}")

    def _drain(self, wait: float = 0) -> None:
        while select.select([self.fd], [], [], wait)[0]:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk
            wait = 0

    def close(self) -> None:
        os.close(self.fd)


def test_terminal_history_ctrl_c_stops_a_reply_and_ctrl_d_leaves_on_a_new_line(endless_run):
    term = Terminal(_chat_args(endless_run, 1_000_000))
    try:
        term.read_until(b"> ")
        term.type(b"/reset\r")
        term.read_until(b"(conversation forgotten)")
        term.read_until(b"> ", count=2)
        term.type(b"\x1b[A\r")  # the Up arrow recalls "/reset" from readline's history
        term.read_until(b"(conversation forgotten)", count=2)
        term.read_until(b"> ", count=3)
        assert b"^[[A" not in term.output  # the arrow key was not echoed as text

        term.type(b"the fox\r")  # a reply that would go on for a million tokens
        term.read_until(b"the fox\r\n")
        term.read_more(20)  # the reply is streaming
        term.type(b"\x03")  # Ctrl-C: stops this reply, the session goes on
        term.read_until(b"(reply stopped)")
        term.read_until(b"> ", count=4)

        term.type(b"\x04")  # Ctrl-D on an empty line
        assert term.exit_code() == 0
        assert term.output.endswith(b"> \r\n")  # the shell's next prompt starts on its own line
        assert b"Traceback" not in term.output
    finally:
        term.close()


def test_terminal_ctrl_c_at_the_prompt_leaves_cleanly(endless_run):
    term = Terminal(_chat_args(endless_run, 5))
    try:
        term.read_until(b"> ")
        term.type(b"half a li")
        term.read_until(b"half a li")  # echoed by readline: it is waiting for keys
        # Python's readline loses a signal that lands between drawing the prompt and waiting for
        # keys (it waits on until the next key); a person's Ctrl-C never comes that fast.
        time.sleep(0.5)
        term.type(b"\x03")  # Ctrl-C
        assert term.exit_code() == 0
        assert b"Traceback" not in term.output and b"interrupted" not in term.output
    finally:
        term.close()
