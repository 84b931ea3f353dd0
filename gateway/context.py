"""Access to the app's shared collaborators from views."""

from __future__ import annotations

from flask import current_app

from gateway.app import Gateway


def gateway() -> Gateway:
    return current_app.extensions["sms_gateway"]
