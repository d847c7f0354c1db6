"""One router per resource; `create_app` includes them all."""

from magistrate.server.routes import classify, decisions, health, keys, moderations, policies

ROUTERS = (
    classify.router,
    moderations.router,
    policies.router,
    decisions.router,
    keys.router,
    health.router,
)

__all__ = ["ROUTERS"]
