"""A TLS Redis whose certificate no CA signed, as Heroku Redis serves (issue 23, item 1: the Procfile deploys as is).

Heroku's add-on sets ``REDIS_URL`` to a ``rediss://`` URL with a self-signed certificate, which redis-py refuses.
``REDIS_TLS_VERIFY=false`` lets the gateway use it (encrypted, the server not verified) without editing the URL the
add-on owns. The test runs a real redis-server with TLS on and a certificate made here.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from config import load_settings
from core.redis import connect_redis
from tests.conftest import free_port, wait_for


@pytest.fixture
def tls_redis(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (apt-get install openssl): it makes the test's certificate")
    from sandbox.launcher import redis_server_binary

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem"), "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--tls-cert-file", str(tmp_path / "cert.pem"), "--tls-key-file", str(tmp_path / "key.pem"),
         "--tls-auth-clients", "no", "--dir", str(tmp_path), "--logfile", str(tmp_path / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "redis.log"
    wait_for(lambda: log.exists() and "Ready to accept connections" in log.read_text(), timeout=10,
             message="redis-server with TLS to start")
    if server.poll() is not None:
        pytest.skip("this redis-server was built without TLS")
    yield f"rediss://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


def test_a_self_signed_tls_redis_is_refused_unless_verification_is_off(env, tls_redis):
    verified = connect_redis(load_settings({**env, "REDIS_URL": tls_redis}, dotenv_path=None))
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        verified.ping()

    unverified = connect_redis(load_settings({**env, "REDIS_URL": tls_redis, "REDIS_TLS_VERIFY": "false"},
                                             dotenv_path=None))
    assert unverified.ping()
    unverified.set("smsgw:tls-check", "1")
    assert unverified.get("smsgw:tls-check") == b"1"


def test_verification_off_changes_nothing_for_a_plain_redis(env, redis_server):
    client = connect_redis(load_settings({**env, "REDIS_TLS_VERIFY": "false"}, dotenv_path=None))
    assert client.ping()
