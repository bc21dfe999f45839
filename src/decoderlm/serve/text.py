"""One completion's text as its tokens arrive: when it ends (EOS, a stop string) and which new text
is safe to send.

Text is held back while it could still be the start of a stop string, or while it ends in an
incomplete multi-byte character (as `decoderlm.generate.stream_text` does), so the pieces sent add
up to the final text exactly, and a stop string is never sent.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"  # what a decoder shows for a character whose bytes have not all arrived


class CompletionText:
    def __init__(self, tokenizer, stops: tuple[str, ...] = (), eos_ids: frozenset[int] = frozenset()):
        self.tokenizer, self.stops, self.eos_ids = tokenizer, stops, eos_ids
        self.longest_stop = max((len(s) for s in stops), default=0)
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters of self.text already handed out

    def add(self, token: int) -> tuple[str, str | None]:
        """Take the next token; return (text that may be sent now, "stop" if the completion has ended)."""
        if token in self.eos_ids:
            return self.rest(), "stop"
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        cut = self._first_stop()
        if cut is not None:
            self.text = self.text[:max(cut, self.sent)]
            return self.rest(), "stop"
        ready = len(self.text) - max(self.longest_stop - 1, 0)
        while ready > self.sent and self.text[ready - 1] == REPLACEMENT:
            ready -= 1
        if ready <= self.sent:
            return "", None
        piece, self.sent = self.text[self.sent:ready], ready
        return piece, None

    def rest(self) -> str:
        """Everything not yet sent (when the completion ends)."""
        piece, self.sent = self.text[self.sent:], len(self.text)
        return piece

    def _first_stop(self) -> int | None:
        # A stop string can only end in the text that was held back, so search just before it.
        since = max(0, self.sent - self.longest_stop)
        hits = [i for i in (self.text.find(s, since) for s in self.stops) if i >= 0]
        return min(hits) if hits else None
