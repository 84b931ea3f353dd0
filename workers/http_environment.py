"""How the worker's HTTP clients use requests: the environment read once per session, and requests sent
without the Session's per-call merging.

With ``trust_env`` on, requests looks at the process environment on every request: it scans every variable
for proxies (twice: the proxies, then ``no_proxy``) and looks for a ``.netrc`` file, about 0.15 ms of CPU a
call on this machine, three calls per answered message. A worker's sessions each talk to one origin, and
the environment does not change under a running process, so the same answer is read once, when the
session is made, through requests' public ``merge_environment_settings``, and kept on the session.

``Session.request`` also merges the session's own settings into every request (headers, params, auth,
cookies, hooks: seven merges, each with ``typing.Protocol`` checks that are slow on Python 3.11) and runs
every answer through its cookie jar. These clients set their own headers (over requests' defaults, as a
Session's) and keep no cookies, so ``send``
prepares the request with requests' ``PreparedRequest`` and sends it through the session's adapter
(``HTTPAdapter.send``, the connection pool), with the proxies and TLS settings pinned on the session: about a
fifth of the CPU of a call.

What differs from ``Session.request``: a ``.netrc`` entry is not applied (the UponAI client sends its own
Authorization header, which a ``.netrc`` entry would otherwise replace; Twilio's client passes its
credentials itself), the session's own headers, auth and cookies are not added, and no redirect is followed (an
API answering 3xx is an error the callers report, not a page to go to).
"""

from __future__ import annotations

from typing import Any

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


def send(session: requests.Session, method: str, url: str, *, timeout, headers: dict[str, str] | None = None,
         params: Any = None, data: Any = None, json: Any = None, auth: Any = None) -> requests.Response:
    """Make one call through ``session``'s connection pool and read its answer; raises what requests raises.

    ``params``, ``data``, ``json``, ``auth``: as ``requests.request`` takes them.
    """
    merged = requests.utils.default_headers()  # what a Session adds: User-Agent, Accept-Encoding, Accept, Connection
    merged.update(headers or {})
    request = requests.PreparedRequest()
    request.prepare(method=method, url=url, headers=merged, params=params, data=data, json=json, auth=auth)
    response = session.get_adapter(request.url).send(request, timeout=timeout, verify=session.verify,
                                                      cert=session.cert, proxies=session.proxies)
    response.content  # noqa: B018 - read it all now, as Session.send does: the connection goes back to the pool
    return response
