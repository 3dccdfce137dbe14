"""Run orchestration: prepare → train → edit → evaluate, each writing into its own run directory."""
