"""Instruction and chat data for fine-tuning: read conversations (formats), render them through a
chat template (template, render) into ids and a loss mask, grow the vocabulary for the template's
special tokens (vocab), and lay the examples out in packed or padded windows (packing, dataset).
See docs/finetuning.md."""

from decoderlm.chat.dataset import ChatBatches, render_all, split_examples
from decoderlm.chat.formats import detect_format, is_chat_file, iter_conversations, read_conversations
from decoderlm.chat.packing import (
    IGNORE_INDEX, Batch, FitReport, best_fit, block_causal_layout, fit_to_window, layout_efficiency, pack,
    packed_batch, padded_batch,
)
from decoderlm.chat.render import ChatRenderer, Example, trim_history
from decoderlm.chat.store import has_examples, load_examples, save_examples
from decoderlm.chat.template import (
    ChatTemplate, default_template, read_saved_template, read_template_file, save_template, special_token_variables,
)
from decoderlm.chat.vocab import add_special_tokens, resize_token_embeddings

__all__ = [
    "Batch", "ChatBatches", "ChatRenderer", "ChatTemplate", "Example", "FitReport", "IGNORE_INDEX",
    "add_special_tokens", "best_fit", "has_examples", "load_examples", "save_examples", "block_causal_layout", "default_template", "detect_format", "fit_to_window",
    "is_chat_file", "iter_conversations", "layout_efficiency", "pack", "packed_batch", "padded_batch",
    "read_conversations", "read_saved_template", "read_template_file", "render_all", "resize_token_embeddings",
    "save_template", "special_token_variables", "split_examples", "trim_history",
]
