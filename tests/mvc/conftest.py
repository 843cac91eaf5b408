"""Fixtures of the mvc tests: a real S3 API on loopback (moto's server mode) for the remote tests.
Puts this directory on sys.path (pytest runs with --import-mode=importlib) for shared helpers
such as damage.py."""
import logging
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def run(in_repo):
    """The CLI through CliRunner in a fresh repository: run(*args, code=0) asserts the exit code."""
    from click.testing import CliRunner

    from mvc.cli import cli
    runner = CliRunner()

    def invoke(*args, code=0):
        result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == code, (result.stdout, result.stderr)
        return result
    return invoke


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3 server on a free port of 127.0.0.1, started once per session and stopped afterwards."""
    pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log on stderr
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Dummy credentials for the loopback server; nothing read from the user's AWS configuration."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # (no wait on an instance-metadata service)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
