"""The running service (``cxbridge serve``): ingress, admin API, the Copilot WebSocket, metrics.

Handlers hold no business logic: they authenticate, parse and answer over the same engine and store
API as the CLI. :func:`create_app` builds the ASGI application of a :class:`Service`;
:func:`run_serve` runs it on uvicorn.
"""

from cxbridge.service.app import create_app, openapi_document
from cxbridge.service.runtime import Service
from cxbridge.service.server import run_serve
from cxbridge.service.settings import ServiceSettings

__all__ = ["Service", "ServiceSettings", "create_app", "openapi_document", "run_serve"]
