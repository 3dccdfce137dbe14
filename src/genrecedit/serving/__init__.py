"""Serving: a live recommender that takes new items and applies GenRecEdit while it answers requests."""
from genrecedit.serving.api import create_app, serve
from genrecedit.serving.service import Interaction, LiveService, NewItem, ServiceConfig

__all__ = ["Interaction", "LiveService", "NewItem", "ServiceConfig", "create_app", "serve"]
