"""Baselines a GenRecEdit edit is compared with."""
