"""Settings come from GPUPOOL_* variables and explicit values; the database defaults to SQLite in the home."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gpupool.client.settings import DEFAULT_HOME, DEFAULT_PORT, ClientSettings
from gpupool.domain.errors import ValidationError as GpupoolValidationError
from gpupool.server.settings import DEFAULT_HOME as SERVER_HOME
from gpupool.server.settings import DEFAULT_PORT as SERVER_PORT
from gpupool.server.settings import Settings


def test_defaults_and_derived_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUPOOL_HOME", str(tmp_path))
    settings = Settings()
    assert settings.host == "127.0.0.1" and settings.port == 8700
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'gpupool.db'}"
    assert settings.token_file == tmp_path / "token"


def test_environment_and_explicit_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUPOOL_DATABASE_URL", "postgresql://u:p@db/gpupool")
    monkeypatch.setenv("GPUPOOL_GPUS", "2xH100")
    settings = Settings(port=9000)
    assert settings.resolved_database_url == "postgresql://u:p@db/gpupool"
    assert settings.gpus == "2xH100" and settings.port == 9000


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(port=70000)
    with pytest.raises(ValidationError):
        Settings(executor="docker")


def test_the_client_reads_the_token_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GPUPOOL_TOKEN", raising=False)
    monkeypatch.setenv("GPUPOOL_HOME", str(tmp_path))
    assert ClientSettings().resolved_token() is None
    (tmp_path / "token").write_text("gpp_abc\n")
    assert ClientSettings().resolved_token() == "gpp_abc"
    monkeypatch.setenv("GPUPOOL_TOKEN", "gpp_env")
    assert ClientSettings().resolved_token() == "gpp_env"


def test_the_client_finds_the_server_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("URL", "TOKEN", "TIMEOUT_S"):
        monkeypatch.delenv(f"GPUPOOL_{name}", raising=False)
    monkeypatch.setenv("GPUPOOL_HOME", str(tmp_path / "." / "home"))
    default = ClientSettings()
    assert (default.url, default.timeout_s, default.home) == (f"http://127.0.0.1:{SERVER_PORT}", 30.0,
                                                               tmp_path / "home")
    assert DEFAULT_PORT == SERVER_PORT
    monkeypatch.setenv("GPUPOOL_URL", "http://pool.example:9000")
    monkeypatch.setenv("GPUPOOL_TIMEOUT_S", "2.5")
    assert (ClientSettings().url, ClientSettings().timeout_s) == ("http://pool.example:9000", 2.5)
    assert ClientSettings(url="http://other:1").url == "http://other:1"
    monkeypatch.setenv("GPUPOOL_TIMEOUT_S", "soon")
    with pytest.raises(GpupoolValidationError, match="GPUPOOL_TIMEOUT_S: expected a number of seconds"):
        ClientSettings()


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage\n", "tökén\n".encode(), b"two words\n", b"a\x07b\n"])
def test_a_corrupt_token_file_is_a_clear_error_not_a_traceback(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "token").write_bytes(content)
    with pytest.raises(GpupoolValidationError, match=r"does not hold a gpupool token.*--reset-admin-token"):
        ClientSettings(home=tmp_path, token=None).resolved_token()


def test_a_token_file_gives_its_first_line_and_a_missing_one_none(tmp_path: Path) -> None:
    assert ClientSettings(home=tmp_path, token=None).resolved_token() is None
    (tmp_path / "token").write_text("gpp_abc\nignored\n")
    assert ClientSettings(home=tmp_path, token=None).resolved_token() == "gpp_abc"


def test_the_notebook_warm_pool_is_off_by_default_and_set_per_python(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    from gpupool.server.executors import make_executor, warm_pythons  # noqa: PLC0415

    monkeypatch.setenv("GPUPOOL_HOME", str(tmp_path))
    assert Settings().notebook_warm_pool == 0
    monkeypatch.setenv("GPUPOOL_NOTEBOOK_WARM_POOL", "2")
    monkeypatch.setenv("GPUPOOL_NOTEBOOK_WARM_ENVIRONMENTS", "torch lab")
    settings = Settings()
    assert (settings.notebook_warm_pool, settings.notebook_warm_environments) == (2, "torch lab")
    assert len(warm_pythons(settings)) == 1  # neither environment is built: only the default interpreter
    executor = make_executor(Settings(notebook_warm_pool=0))
    assert executor.warm.size == 0  # type: ignore[attr-defined]
    executor.close()
    with pytest.raises(ValidationError):
        Settings(notebook_warm_pool=-1)


def test_the_client_looks_for_the_token_where_the_server_of_the_same_user_writes_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # root's server keeps its state in /var/lib/gpupool: root's CLI must find the admin token there by default
    monkeypatch.delenv("GPUPOOL_HOME", raising=False)
    assert Path(DEFAULT_HOME) == SERVER_HOME
    assert ClientSettings().home == SERVER_HOME.expanduser().resolve()


@pytest.mark.parametrize(("value", "expected"), [("600", 600.0), ("off", None), ("OFF", None), ("none", None)])
def test_holds_are_set_in_seconds_or_switched_off(monkeypatch: pytest.MonkeyPatch, value: str,
                                                   expected: float | None) -> None:
    monkeypatch.setenv("GPUPOOL_HOLD_AFTER_S", value)
    assert Settings().hold_after_s == expected


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_a_bad_hold_time_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("GPUPOOL_HOLD_AFTER_S", value)
    with pytest.raises(ValidationError, match="hold_after_s"):
        Settings()
