"""Evaluation stage: ranking metrics, Overall/Warm/Cold reports with bootstrap intervals, popularity baselines."""
from genrecedit.evaluation.baselines import most_popular, popularity_topk, recent_popular
from genrecedit.evaluation.bootstrap import bootstrap_ci, paired_bootstrap_diff
from genrecedit.evaluation.report import EvalResult, evaluate_topk, format_table, markdown_table, write_metrics

__all__ = [
    "EvalResult", "evaluate_topk", "bootstrap_ci", "paired_bootstrap_diff", "write_metrics", "markdown_table",
    "format_table", "most_popular", "recent_popular", "popularity_topk",
]
