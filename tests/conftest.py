"""Shared pytest fixtures: isolated environment for every test (author, no git config leakage)."""
import pytest

from kernels.determinism import pin_blas_reproducibility

pin_blas_reproducibility()  # before any test's first matrix product: bits do not depend on threads


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("MVC_AUTHOR", "Test Author <test@example.com>")
    monkeypatch.delenv("MVC_DEBUG", raising=False)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "T")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "t@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "T")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "t@example.com")
    yield


@pytest.fixture
def repo(tmp_path):
    import mvc
    return mvc.Repo.init(tmp_path / "repo")


@pytest.fixture
def in_repo(repo, monkeypatch):
    monkeypatch.chdir(repo.root)
    return repo
