"""FastAPI dependencies: the running `Service`, and the caller's API key with a scope.

Routes declare `svc: ServiceDep` and `key: ClassifyKey` or `key: AdminKey`; nothing else
reaches the service. Where keys are required, the `RequireKey` middleware has already found
the caller's key before the body was read; these check its scope and rate.
"""

# No `from __future__ import annotations`: FastAPI reads these aliases from the routes'
# signatures and needs them evaluated.

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from magistrate.errors import Unavailable
from magistrate.server.middleware import identified
from magistrate.server.service import Service
from magistrate.store.store import ApiKey

bearer = HTTPBearer(auto_error=False, description="An API key from `magistrate keys create`.")


def running_service(request: Request) -> Service | None:
    """The app's service, once the lifespan has made it."""
    service: Service | None = getattr(request.app.state, "service", None)
    return service


def get_service(request: Request) -> Service:
    """The service, when it can take requests.

    Raises:
        Unavailable: The server is starting or shutting down (503).
    """
    service = running_service(request)
    if service is None:
        raise Unavailable("The server is starting.", code="starting")
    if service.draining:
        raise Unavailable("The server is shutting down.", code="draining", retry_after=5)
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


async def classify_caller(request: Request, svc: ServiceDep, credentials: Credentials) -> ApiKey:
    """A caller allowed to judge (scope `classify` or `admin`)."""
    known = identified(request.scope)
    return await svc.authenticate(_secret(credentials), "classify", known=known)


async def batch_caller(request: Request, svc: ServiceDep, credentials: Credentials) -> ApiKey:
    """A caller allowed to run batch jobs (scope `batch` or `admin`)."""
    known = identified(request.scope)
    return await svc.authenticate(_secret(credentials), "batch", known=known)


async def admin_caller(request: Request, svc: ServiceDep, credentials: Credentials) -> ApiKey:
    """A caller allowed to administer policies, decisions and keys (scope `admin`)."""
    known = identified(request.scope)
    return await svc.authenticate(_secret(credentials), "admin", known=known)


def _secret(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials is not None else None


ClassifyKey = Annotated[ApiKey, Depends(classify_caller)]
BatchKey = Annotated[ApiKey, Depends(batch_caller)]
AdminKey = Annotated[ApiKey, Depends(admin_caller)]

__all__ = [
    "AdminKey",
    "BatchKey",
    "ClassifyKey",
    "ServiceDep",
    "get_service",
    "running_service",
]
