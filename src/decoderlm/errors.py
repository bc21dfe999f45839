"""The project's one user-facing exception type.

Raise `DecoderLMError("what is wrong; how to fix it")` for bad input. The CLI prints its message as
one line and exits with code 2; anything else that escapes is a bug and keeps its traceback.
"""


class DecoderLMError(Exception):
    """Bad input or environment: a one-line message the user can act on."""
