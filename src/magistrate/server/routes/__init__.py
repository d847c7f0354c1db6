"""One router per resource; `create_app` includes them all."""

from magistrate.server.routes import (
    batches,
    classify,
    decisions,
    health,
    keys,
    moderations,
    policies,
)

ROUTERS = (
    classify.router,
    moderations.router,
    batches.router,
    policies.router,
    decisions.router,
    keys.router,
    health.router,
)

__all__ = ["ROUTERS"]
