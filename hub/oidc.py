"""Login through the company's identity provider: OAuthenticator's GenericOAuthenticator,
configured from podbay.yaml's `auth:` by OpenID Connect discovery, with messages a person
(or the platform team) can act on where OAuthenticator alone shows "500 Internal Server
Error": client credentials the provider refuses, a provider that does not answer, a
provider that sends no groups claim. Nothing is made for a person whose login fails."""

from __future__ import annotations

import json
from functools import reduce

from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Bool, Unicode


class PodbayOIDCAuthenticator(GenericOAuthenticator):
    groups_claim = Unicode("groups", config=True, help="The userinfo claim with the person's groups (dotted when nested).")
    issuer = Unicode(config=True, help="The provider's issuer URL, for messages.")
    pass_access_token = Bool(False, config=True, help="Give workspaces the provider's access token as "
                                                      "OAUTH_ACCESS_TOKEN (refreshed before each start).")

    async def pre_spawn_start(self, user, spawner):
        # refresh_pre_spawn (on with auth state) has refreshed the tokens by now.
        if not self.pass_access_token:
            return
        auth_state = await user.get_auth_state() or {}
        if auth_state.get("access_token"):
            spawner.environment = {**spawner.environment, "OAUTH_ACCESS_TOKEN": auth_state["access_token"]}

    async def get_token_info(self, handler, params):
        try:
            return await super().get_token_info(handler, params)
        except HTTPClientError as e:
            error = ""
            if e.response is not None and e.response.body:
                try:
                    error = json.loads(e.response.body).get("error", "")
                except (ValueError, AttributeError):
                    pass
            if error == "invalid_client":
                raise web.HTTPError(502, "The identity provider refused podbay's client credentials "
                                         "(invalid_client). The platform team must check auth.client_id and the "
                                         "client secret registered at the provider.") from None
            if error == "invalid_grant":
                raise web.HTTPError(400, "This login was already used or has expired: log in again.") from None
            raise web.HTTPError(502, f"The identity provider did not issue a token ({e.code} {error}). "
                                     "Try again; if it goes on, tell the platform team.") from None
        except OSError as e:
            raise web.HTTPError(502, f"The identity provider at {self.issuer or self.token_url} does not answer "
                                     f"({e.strerror or e}). Try again later; if it goes on, tell the platform "
                                     "team.") from None

    async def token_to_user(self, token_info):
        try:
            return await super().token_to_user(token_info)
        except OSError as e:
            raise web.HTTPError(502, f"The identity provider at {self.issuer or self.userdata_url} does not "
                                     f"answer ({e.strerror or e}). Try again later.") from None

    async def get_user_groups(self, auth_state: dict):
        user = (auth_state or {}).get("oauth_user") or {}
        try:
            groups = reduce(dict.get, self.groups_claim.split("."), user)
        except TypeError:
            groups = None
        if groups is None:
            # Without it nobody's teams can be told: say so, rather than "not authorized".
            self.log.error("the identity provider sent no %r claim for %s (claims: %s)", self.groups_claim,
                           user.get(self.username_claim) if isinstance(self.username_claim, str) else "?",
                           ", ".join(sorted(user)))
            raise web.HTTPError(403, f"The identity provider sent no '{self.groups_claim}' claim, so podbay cannot "
                                     "tell your teams. The platform team must add it to podbay's client at the "
                                     "provider (a groups mapper or scope), or set auth.groups_claim.")
        if isinstance(groups, str):
            groups = [groups]
        return set(groups)
