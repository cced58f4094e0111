"""settings.json + .env -> validated settings; bad files are refused with the key and the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_workers
from workers import settings as settings_module
from workers.errors import SettingsError
from workers.settings import Settings


def write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "settings.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_an_empty_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    settings = settings_module.load(str(write(tmp_path, {})))
    assert settings.mode == "web"
    assert settings.jobs == ["app_jobs"]
    assert settings.cluster.count == 2
    assert settings.workers.count == 10
    assert settings.workers.queue.poll_interval == 1.0
    assert settings.workers.queue.lease == 30
    assert settings.workers.queue.retries == 9  # 10 attempts, as monq's attempts.count
    assert settings.workers.queue.backoff == "exponential"


def test_settings_example_json_documents_every_key_with_its_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MONGO_URL", raising=False)
    example = json.loads((ROOT / "settings.example.json").read_text())
    defaults = Settings().model_dump()
    assert _keys(example) == _keys(defaults)
    validated = settings_module.validate(example).model_dump()
    validated["mongo"]["url"] = validated["mongo"]["url"] or None  # "${MONGO_URL}" unset
    assert validated == defaults


def _keys(value: object, prefix: str = "") -> set[str]:
    if not isinstance(value, dict):
        return set()
    keys = set()
    for key, item in value.items():
        if not key.startswith("//"):
            keys |= {prefix + key} | _keys(item, f"{prefix}{key}.")
    return keys


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ({"workers": {"count": 0}}, "workers.count"),
        ({"cluster": {"count": -1}}, "cluster.count"),
        ({"cluster": {"count": "2"}}, "cluster.count"),
        ({"workers": {"queue": {"poll_interval": "fast"}}}, "workers.queue.poll_interval"),
        ({"workers": {"queue": {"lease": 1}}}, "workers.queue.lease"),
        ({"workers": {"cron": {"log": "yes"}}}, "workers.cron.log"),
        ({"wrokers": {}}, "wrokers: unknown key"),
        ({"workers": {"monq": {}}}, "workers.monq: unknown key"),
        ({"mode": "daemon"}, "mode"),
        ({"jobs": "app_jobs"}, "jobs"),
        ([1, 2], "top level must be a JSON object"),
    ],
)
def test_a_bad_settings_file_is_refused_naming_the_key_and_the_file(
    tmp_path: Path, content: object, named: str
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(SettingsError) as caught:
        settings_module.load(str(path))
    message = str(caught.value)
    assert named in message
    assert str(path.resolve()) in message or str(path) in message
    assert "\n" not in message


def test_invalid_json_is_refused_with_its_position(tmp_path: Path) -> None:
    path = write(tmp_path, '{"workers": {"count": 3,}}')
    with pytest.raises(SettingsError, match=r"not valid JSON.*line 1 column 25"):
        settings_module.load(str(path))


def test_a_named_settings_file_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"cannot read settings file .*missing\.json"):
        settings_module.load(str(tmp_path / "missing.json"))


def test_the_lookup_order_is_flag_then_environment_then_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, {"cluster": {"count": 3}})
    (tmp_path / "env.json").write_text(json.dumps({"cluster": {"count": 4}}))
    (tmp_path / "flag.json").write_text(json.dumps({"cluster": {"count": 5}}))
    monkeypatch.delenv("WORKERS_SETTINGS", raising=False)
    assert settings_module.load().cluster.count == 3
    monkeypatch.setenv("WORKERS_SETTINGS", str(tmp_path / "env.json"))
    assert settings_module.load().cluster.count == 4
    assert settings_module.load(str(tmp_path / "flag.json")).cluster.count == 5


def test_no_settings_file_in_the_folder_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORKERS_SETTINGS", raising=False)
    settings = settings_module.load()
    assert settings.source is None
    assert settings.workers.count == 10


def test_dotenv_is_loaded_first_and_variables_are_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MONGO_URL", raising=False)
    monkeypatch.delenv("APP_DB", raising=False)
    (tmp_path / ".env").write_text("MONGO_URL=mongodb://db.example:27017\nAPP_DB=shop\n")
    write(tmp_path, {"mongo": {"url": "${MONGO_URL}", "database": "${APP_DB}"}})
    settings = settings_module.load(str(tmp_path / "settings.json"))
    assert settings.mongo_url() == "mongodb://db.example:27017"
    assert settings.mongo.database == "shop"


def test_headless_on_the_command_line_overrides_mode(tmp_path: Path) -> None:
    path = write(tmp_path, {"mode": "web"})
    assert settings_module.load(str(path), mode="headless").mode == "headless"


def test_an_unset_url_and_no_mongo_url_means_the_embedded_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MONGO_URL", raising=False)
    settings = settings_module.validate({"mongo": {"url": "${MONGO_URL}"}})
    assert settings.mongo_url() is None


def test_the_cli_refuses_a_bad_file_in_one_line_and_starts_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, {"workers": {"count": 0}})
    done = run_workers("--headless", "--settings", str(path), cwd=tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "workers.count" in lines[0] and str(path) in lines[0]
    assert not (tmp_path / ".workers").exists()  # no server, no supervisord config
