# JupyterHub configuration for podbay. `podbay up` uses the same function; operators may
# call it and then override what they need (the authenticator above all).
from podbay.hub.hubconfig import configure

configure(c)  # noqa: F821 (c is given by JupyterHub)
