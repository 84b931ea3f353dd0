"""Light modules the web and the workers share: the message model, queues, Redis state, metrics, redaction."""
