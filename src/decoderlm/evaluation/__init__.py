"""Evaluation: perplexity and bits per byte on any text source, and lm-evaluation-harness tasks.

`evaluate_text(lm, sources)` (perplexity.py) scores text with a strided sliding window;
`run_tasks(lm, names, ...)` (harness.py) runs lm-eval tasks through decoderlm's own model class
(lm_eval_adapter.py, registered with lm-eval as "decoderlm"). lm-eval is the optional `eval` extra.
Results go into a run directory's eval.json (results.py). See docs/evaluation.md.
"""

from decoderlm.evaluation.perplexity import TextScore, evaluate_text

__all__ = ["TextScore", "evaluate_text"]
