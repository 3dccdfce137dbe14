"""Merging stage (MMGRid, METHOD §7): merge methods over state dicts, a mergekit-style spec, and the merge run."""
