"""podbay's REST service: catalog, capacity, quota, volumes and training jobs.

JupyterHub runs it as a managed service under /services/podbay/; the API is under
`api/v1/` there, its OpenAPI document at `api/v1/openapi.json`. Callers authenticate with
JupyterHub API tokens (`Authorization: token …` or `Bearer …`), which the hub resolves.
Every error is JSON `{"error": code, "message": sentence}` and never repeats a token.

The package, one place per concern: `app` (the FastAPI app and what runs while it serves),
`context` (what routers share, and the caller dependency), `hubclient` (the hub's REST API),
`errors`, `schemas`, `routers/` (one per resource), `pages` and `pairing` (the browser's),
`main` (the process JupyterHub starts).
"""

from .app import create_app
from .hubclient import ACCESS_SCOPE, Caller, HubClient

__all__ = ["ACCESS_SCOPE", "Caller", "HubClient", "create_app"]
