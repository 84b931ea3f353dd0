"""Local stand-ins for UponAI and Twilio, used by the tests, the benchmark and the sandbox."""
