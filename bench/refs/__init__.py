"""Reference web apps served with the Procfile's gunicorn settings, for comparison with the gateway."""
