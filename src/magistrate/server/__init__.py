"""The moderation service: Magistrate over HTTP (FastAPI on uvicorn).

Example:
    >>> from magistrate.server import ServerSettings, create_app
    >>> app = create_app(ServerSettings(model="llamacpp/embedded", policies_dir="policies"))
"""

from magistrate.server.app import create_app
from magistrate.server.schemas import MODERATION_CATEGORIES, ServerSettings
from magistrate.server.service import Service

__all__ = ["MODERATION_CATEGORIES", "ServerSettings", "Service", "create_app"]
