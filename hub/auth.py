"""The embedded mode's login: the demo users of the config, one shared password.

Only for `podbay up` on one machine; a real deployment uses OAuthenticator against the
identity provider.
"""

from __future__ import annotations

import hmac

from jupyterhub.auth import Authenticator
from traitlets import Set, Unicode


class DemoAuthenticator(Authenticator):
    demo_users = Set(Unicode(), config=True, help="Users who may log in.")
    password = Unicode(config=True, help="The one password of the demo users.")

    async def authenticate(self, handler, data):
        username = (data or {}).get("username", "")
        password = (data or {}).get("password", "")
        if not self.password or username not in self.demo_users:
            return None
        if not hmac.compare_digest(password.encode(), self.password.encode()):
            return None
        return username
