"""Merging stage (MMGRid, docs/method.md §7): merge methods over state dicts, a mergekit-style spec, and the merge
run."""
