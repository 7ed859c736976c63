"""One router per resource of the REST API (`api/v1/…`); pages and pairing are routers too
(../pages.py, ../pairing.py)."""
