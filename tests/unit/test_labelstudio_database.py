"""`labelstudio start --database`: URL parsing, password sources, the child's environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from camlabel.backends.labelstudio import server as srv
from camlabel.cli.main import cli
from camlabel.errors import ConfigError, UsageError
from camlabel.workspace import Workspace


def test_parse_gives_label_studios_own_settings() -> None:
    db = srv.Database.parse("postgresql://ls%40team@db.example.org:6543/label_studio")
    assert db == srv.Database(user="ls@team", host="db.example.org", port=6543, name="label_studio")
    assert db.env("s3cret") == {
        "DJANGO_DB": "default",
        "POSTGRE_NAME": "label_studio",
        "POSTGRE_USER": "ls@team",
        "POSTGRE_HOST": "db.example.org",
        "POSTGRE_PORT": "6543",
        "POSTGRE_PASSWORD": "s3cret",
    }
    assert srv.Database.parse("postgres://u@h/d").port == 5432
    assert "POSTGRE_PASSWORD" not in srv.Database.parse("postgres://u@h/d").env(None)


def test_a_password_in_the_url_is_refused_and_never_echoed() -> None:
    with pytest.raises(UsageError) as err:
        srv.Database.parse("postgresql://u:hunter22@h:5432/d")
    assert "hunter22" not in err.value.message + str(err.value.hint)
    assert "u:***@h:5432" in err.value.message and "CAMLABEL_LS_DB_PASSWORD" in str(err.value.hint)


@pytest.mark.parametrize(
    "url",
    ["mysql://u@h/d", "postgresql://h:5432/d", "postgresql://u@h:5432/", "postgresql://u@h:x/d"],
)
def test_malformed_urls_say_the_expected_form(url: str) -> None:
    with pytest.raises(UsageError, match="postgresql://"):
        srv.Database.parse(url)


def test_password_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace.init(tmp_path / "ws")
    for name in srv.DB_PASSWORD_ENV:
        monkeypatch.delenv(name, raising=False)
    assert srv.db_password(ws) is None
    (ws.root / "secrets" / srv.DB_SECRETS_NAME).write_text(json.dumps({"password": "from-file"}))
    assert srv.db_password(ws) == "from-file"
    monkeypatch.setenv("PGPASSWORD", "from-pg")
    assert srv.db_password(ws) == "from-pg"
    monkeypatch.setenv("CAMLABEL_LS_DB_PASSWORD", "from-camlabel")
    assert srv.db_password(ws) == "from-camlabel"
    monkeypatch.delenv("CAMLABEL_LS_DB_PASSWORD")
    monkeypatch.delenv("PGPASSWORD")
    (ws.root / "secrets" / srv.DB_SECRETS_NAME).write_text("{}")
    with pytest.raises(ConfigError, match=srv.DB_SECRETS_NAME):
        srv.db_password(ws)


def test_inherited_database_settings_never_reach_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "DJANGO_DB": "default",
        "POSTGRE_HOST": "elsewhere",
        "LABEL_STUDIO_POSTGRE_PASSWORD": "x",
        "DATABASE_NAME": "/tmp/other.sqlite3",
        "MYSQL_HOST": "m",
    }.items():
        monkeypatch.setenv(name, value)
    env = srv.server_env(tmp_path, tmp_path)
    assert not {"DJANGO_DB", "POSTGRE_HOST", "LABEL_STUDIO_POSTGRE_PASSWORD"} & set(env)
    assert not {"DATABASE_NAME", "MYSQL_HOST"} & set(env)
    db = srv.Database.parse("postgresql://u@127.0.0.1:5/d")
    env = srv.server_env(tmp_path, tmp_path, db.env("pw"))
    assert env["DJANGO_DB"] == "default" and env["POSTGRE_PASSWORD"] == "pw"


def test_a_server_set_up_on_sqlite_refuses_another_database(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    dd = srv.data_dir(ws)
    dd.mkdir()
    (dd / srv.READY_MARKER).write_text("x\n")
    res = CliRunner().invoke(
        cli, ["labelstudio", "start", "-w", str(ws.root), "--database", "postgresql://u@h:5/d"]
    )
    assert res.exit_code == 1
    assert "set up on SQLite" in res.output and "postgresql://u@h:5/d" in res.output
    res = CliRunner().invoke(
        cli, ["labelstudio", "start", "-w", str(ws.root), "--database", "postgresql://u:pw@h/d"]
    )
    assert res.exit_code == 2 and ":pw@" not in res.output
