"""`decoderlm bench`: decoderlm against the peers a user would pick instead, measured side by side in
one process (alternating runs after warm-up, medians), printed as ratios."""
