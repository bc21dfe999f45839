"""Text in, token shards out: sources -> tokenizer -> memmapped token shards -> training batches."""
