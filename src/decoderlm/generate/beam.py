"""Beam search with length penalty and early stopping, over the KV cache.

The bookkeeping follows transformers' vectorised beam search step for step (so that both pick the
same beams): every step keeps the best max(2, 1 + #EOS) * K continuations of the K running beams,
moves those that end in EOS (or reach the length limit) into a pool of K finished hypotheses scored
by sum(log p) / length ** length_penalty, and continues with the best K that did not end.
`early_stopping`: True stops a batch item once K hypotheses are finished; False stops when the best
running beam, scored at its current length, cannot beat the worst finished one; "never" scores it
at the maximum length instead when length_penalty > 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from decoderlm.generate.decoding import Sequences
from decoderlm.generate.options import GenerationOptions
from decoderlm.generate.processors import apply_repetition_penalty, seen_tokens

NEG = -1.0e9  # "impossible" score; finite so that sums and sorting stay well defined


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t (B, N, ...) -> t[b, index[b, j], ...] (B, J, ...)."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


@torch.inference_mode()
def beam_search(seqs: Sequences, opts: GenerationOptions, vocab_size: int) -> torch.Tensor:
    """`seqs` holds each prompt repeated num_beams times (B * K rows). Returns the best finished
    hypothesis per prompt as (B, n) new tokens, shorter ones padded with the fill token."""
    K, G, V = opts.num_beams, opts.max_new_tokens, vocab_size
    B = seqs.batch_size // K
    device = seqs.seq.device
    lp, early = opts.length_penalty, opts.early_stopping
    fill = opts.fill_token_id
    eos = torch.tensor(opts.eos_token_ids, device=device) if opts.eos_token_ids else None
    n_keep = max(2, 1 + len(opts.eos_token_ids)) * K
    among_top_k = torch.arange(n_keep, device=device) < K  # (n_keep,)
    batch_base = torch.arange(B, device=device).unsqueeze(1) * K  # (B, 1)

    running = torch.full((B, K, G), fill, dtype=torch.long, device=device)  # new tokens of live beams
    running_scores = torch.zeros(B, K, device=device)
    running_scores[:, 1:] = NEG  # all beams start identical: expand only the first
    done = torch.full((B, K, G), fill, dtype=torch.long, device=device)  # finished hypotheses
    done_scores = torch.full((B, K), NEG, device=device)
    done_flag = torch.zeros(B, K, dtype=torch.bool, device=device)
    done_len = torch.zeros(B, K, dtype=torch.long, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    seen = None
    if opts.repetition_penalty != 1.0:
        seen = seen_tokens(seqs.all_tokens(), V, None if seqs.valid is None else seqs.valid[:, :seqs.length])

    for t in range(G):
        log_probs = F.log_softmax(seqs.next_logits(), dim=-1)  # (B*K, V)
        if seen is not None:
            log_probs = apply_repetition_penalty(log_probs, seen, opts.repetition_penalty)
        totals = (log_probs.view(B, K, V) + running_scores.unsqueeze(-1)).view(B, K * V)
        cand_scores, cand_index = torch.topk(totals, n_keep)  # (B, n_keep)
        cand_beam, cand_token = cand_index // V, cand_index % V
        cand_seq = _gather(running, cand_beam)  # (B, n_keep, G)
        cand_seq[:, :, t] = cand_token
        ends = torch.isin(cand_token, eos) if eos is not None else torch.zeros_like(cand_token, dtype=torch.bool)
        if t + 1 == G:
            ends = torch.ones_like(ends)  # the length limit ends every candidate

        # The best K candidates that did not end continue.
        live_scores = cand_scores + ends.to(torch.float32) * NEG
        live = torch.topk(live_scores, K).indices  # (B, K)
        running, running_scores = _gather(cand_seq, live), _gather(live_scores, live)
        origin = _gather(cand_beam, live)  # (B, K) which old beam each new one extends

        # Candidates among the top K that ended join the finished pool if they score well enough.
        just_done = ends & among_top_k
        scores = cand_scores / ((t + 1) ** lp)
        pool_full = done_flag.all(dim=-1, keepdim=True) & (early is True)
        scores = scores + pool_full.to(torch.float32) * NEG
        scores = scores + (~improvable).to(torch.float32) * NEG
        scores = scores + (~just_done).to(torch.float32) * NEG
        merged_scores = torch.cat([done_scores, scores], dim=1)
        best = torch.topk(merged_scores, K).indices
        done = _gather(torch.cat([done, cand_seq], dim=1), best)
        done_scores = _gather(merged_scores, best)
        done_flag = _gather(torch.cat([done_flag, just_done], dim=1), best)
        done_len = _gather(torch.cat([done_len, torch.full_like(cand_token, t + 1)], dim=1), best)

        # Move the caches and token buffers to the surviving beams, then add their new tokens.
        flat_origin = (origin + batch_base).view(-1)
        seqs.reorder(flat_origin)
        new_tokens = running[:, :, t].reshape(-1)
        seqs.append(new_tokens)
        if seen is not None:
            seen = seen.index_select(0, flat_origin)
            seen[torch.arange(B * K, device=device), new_tokens] = True

        # Could a live beam still beat the worst finished hypothesis?
        best_length = G if (early == "never" and lp > 0) else t + 1
        best_possible = running_scores[:, :1] / (best_length ** lp)
        worst_done = torch.where(done_flag, done_scores.min(dim=1, keepdim=True).values, NEG)
        improvable = improvable & (best_possible > worst_done).any(dim=-1, keepdim=True)
        stop = (not bool(improvable.any())) or (early is True and bool(done_flag.all())) or bool(ends.all())
        if stop:
            break

    length = int(done_len[:, 0].max())
    return done[:, 0, :length]
