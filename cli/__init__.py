"""The operator command line, ``sms-gateway``: worker, run, doctor, configure-twilio and admin commands."""
