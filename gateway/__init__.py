"""The web process: Flask app factory, Twilio webhooks, admin API and health checks.

It never calls UponAI or Twilio: it checks, records, enqueues and answers.
"""

from gateway.app import create_app

__all__ = ["create_app"]
