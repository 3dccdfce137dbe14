"""The service decodes edits the way the run was evaluated and selected: its trigger defaults to the run's
``eval.trigger``."""
from __future__ import annotations

from genrecedit.serving import ServiceConfig


def test_the_trigger_defaults_to_the_runs(open_service):
    assert ServiceConfig().trigger is None  # "the run's"
    plain = open_service("s-plain")
    assert plain.trigger == plain.run.config.eval.trigger == "prefix" and plain.editor.trigger == "prefix"
    preserve = open_service("s-preserve", ["eval.trigger=preserve"])
    assert preserve.trigger == "preserve" and preserve.editor.trigger == "preserve"
    chosen = open_service("s-explicit", ["eval.trigger=preserve"], trigger="prefix")  # an explicit one still wins
    assert chosen.trigger == "prefix" and chosen.editor.trigger == "prefix"
