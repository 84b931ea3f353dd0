"""Read requests' environment settings (proxies, CA bundle) once per HTTP session instead of on every call.

With ``trust_env`` on, requests looks at the process environment on every request: it scans every variable
for proxies (twice: the proxies, then ``no_proxy``) and looks for a ``.netrc`` file, about 0.15 ms of CPU a
call on this machine, three calls per answered message. A worker's sessions each talk to one origin, and
the environment does not change under a running process, so the same answer is read once, when the
session is made, through requests' public ``merge_environment_settings``, and kept on the session.

What differs: a ``.netrc`` entry is no longer applied (the UponAI client sends its own Authorization
header, which a ``.netrc`` entry would otherwise replace; Twilio's client passes its credentials itself).
"""

from __future__ import annotations

import requests


def pin_environment(session: requests.Session, origin: str) -> requests.Session:
    """Give ``session`` the proxies and TLS settings the environment sets for ``origin``, read now, once."""
    found = session.merge_environment_settings(origin, {}, None, None, None)
    session.proxies.update(found.get("proxies") or {})
    if found.get("verify") is not None:
        session.verify = found["verify"]
    if found.get("cert") is not None:
        session.cert = found["cert"]
    session.trust_env = False
    return session
