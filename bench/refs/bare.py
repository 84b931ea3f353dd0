"""Reference (a): the framework's ceiling, a bare Flask endpoint that answers ``<Response/>``."""

from flask import Flask, Response

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

app = Flask(__name__)


@app.post("/twilio/sms")
def inbound_sms():
    return Response(EMPTY_TWIML, status=200, content_type="text/xml; charset=utf-8")
