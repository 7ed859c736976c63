"""podbay's terminal UI and CLI client (Textual + httpx). It talks to the hub's REST API
and podbay's service only; it must never import jupyterhub."""
