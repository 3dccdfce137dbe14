"""The paper's experiments (section 5) on one trained run: ``genrecedit experiment <config>``."""
