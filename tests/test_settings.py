"""settings.json + .env -> validated settings; bad files are refused with the key and the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_command, run_workers, workers_command, workers_env
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
    assert settings.jobs == []  # a headless start asks for them (test_cli)
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
        ({"wrokers": {}}, "wrokers: unknown key; did you mean workers?"),
        ({"cluser": {"count": 2}}, "cluser: unknown key; did you mean cluster?"),
        ({"workers": {"queue": {"leese": 9}}}, "workers.queue.leese: unknown key; did you mean"),
        ({"workers": {"limits": {"A": {"rate": "1/s"}}}}, "limits.A.rate: unknown key; did you"),
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


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("mongo://app:s3cret@db.example/", "it begins with 'mongo://'"),
        ("mongodb:///app", "names no host"),
        ("app:s3cret@db.example:27017", "and it has none"),
        ("mongodb://app:s3cret@db.example:port/", "Port contains non-digit characters"),
    ],
)
def test_a_malformed_mongo_url_is_one_line_naming_it_without_the_password(
    tmp_path: Path, url: str, said: str
) -> None:
    done = run_command(workers_command("status"), cwd=tmp_path, env=workers_env(MONGO_URL=url))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("workers: error:") and "MONGO_URL" in error and said in error, error
    assert "s3cret" not in done.stderr
    assert not (tmp_path / ".workers").exists()  # no embedded server instead


def test_a_malformed_url_in_the_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"mongo": {"url": "localhost:27017"}})
    settings = settings_module.load(str(path))
    with pytest.raises(SettingsError, match=rf"mongo.url \(in {path}\) is not a MongoDB URL"):
        settings.mongo_url()


@pytest.mark.processes
def test_embedded_never_refuses_to_start_without_a_url(tmp_path: Path) -> None:
    env = workers_env(WORKERS_MONGO__EMBEDDED="never")
    done = run_command(workers_command("status"), cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert (
        'no MongoDB URL: set MONGO_URL (or mongo.url) to your server; mongo.embedded is "never"'
        in done.stderr
    )
    assert not (tmp_path / ".workers").exists()


@pytest.mark.processes
def test_the_cli_refuses_a_bad_file_in_one_line_and_starts_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, {"workers": {"count": 0}})
    done = run_workers("--headless", "--settings", str(path), cwd=tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "workers.count" in lines[0] and str(path) in lines[0]
    assert not (tmp_path / ".workers").exists()  # no server, no supervisord config


# --- WORKERS_<SECTION>__<KEY>: the environment over the file -------------------------


def _environment(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def test_the_environment_overrides_the_file_key_by_key_and_the_file_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        {"cluster": {"count": 3}, "workers": {"count": 5, "queue": {"retries": 2, "lease": 40}}},
    )
    _environment(
        monkeypatch,
        WORKERS_CLUSTER__COUNT="4",
        WORKERS_WORKERS__QUEUE__LEASE="20",
        WORKERS_WORKERS__CRON__DISABLE="true",
        WORKERS_MONGO__DATABASE="007",  # a string key keeps its text, not the number 7
    )
    settings = settings_module.load(str(path))
    assert settings.cluster.count == 4  # environment over the file
    assert settings.workers.queue.lease == 20  # a key deep in a section
    assert settings.workers.queue.retries == 2  # the file's sibling keys stay
    assert settings.workers.count == 5  # the file over the defaults
    assert settings.workers.cron.disable is True
    assert settings.mongo.database == "007"
    assert settings.workers.queue.poll_interval == 1.0  # the defaults under both


def test_the_command_line_mode_is_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environment(monkeypatch, WORKERS_MODE="inline")
    assert settings_module.load(str(write(tmp_path, {}))).mode == "inline"
    assert settings_module.load(str(write(tmp_path, {})), mode="headless").mode == "headless"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "WORKERS_CLUSTER__COUNT",
            "0",
            "WORKERS_CLUSTER__COUNT (cluster.count): Input should be greater",
        ),
        (
            "WORKERS_CLUSTER__COUNT",
            "two",
            'WORKERS_CLUSTER__COUNT (cluster.count): Input should be a valid integer (got "two")',
        ),
        (
            "WORKERS_WORKERS__QUEUE__BACKOFF",
            "linear",
            "WORKERS_WORKERS__QUEUE__BACKOFF (workers.queue.backoff)",
        ),
        (
            "WORKERS_MODE",
            "batch",
            "WORKERS_MODE (mode): Input should be 'web', 'headless' or 'inline'",
        ),
        ("WORKERS_JOBS", "[app_jobs", "WORKERS_JOBS: cannot decode '[app_jobs' for jobs"),
        (
            "WORKERS_WEB__TOKENS",
            '[{"name": "ci"}]',
            "WORKERS_WEB__TOKENS (web.tokens.0.role): Field required",
        ),
        ("WORKERS_CLUSTR__COUNT", "2", "WORKERS_CLUSTR__COUNT: no such setting"),
        ("WORKERS_CLUSTER__CONT", "2", "WORKERS_CLUSTER__CONT: no such setting"),
        (
            "WORKERS_WORKERS__QUEUE__LEASE__X",
            "2",
            "WORKERS_WORKERS__QUEUE__LEASE__X: no such setting",
        ),
    ],
)
def test_a_bad_variable_is_refused_naming_the_variable_and_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    path = write(tmp_path, {"cluster": {"count": 3}})
    _environment(monkeypatch, **{name: value})
    with pytest.raises(SettingsError) as raised:
        settings_module.load(str(path))
    assert message in str(raised.value)


def test_the_file_and_the_environment_are_both_named_when_each_has_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, {"workers": {"count": 0}})
    _environment(monkeypatch, WORKERS_CLUSTER__COUNT="-1")
    with pytest.raises(SettingsError) as raised:
        settings_module.load(str(path))
    message = str(raised.value)
    assert f"invalid settings in {path.resolve()} and the environment" in message
    assert "workers.count: Input should be greater" in message  # the file's, as the file's key
    assert "WORKERS_CLUSTER__COUNT (cluster.count)" in message


def test_other_workers_variables_are_not_taken_for_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environment(
        monkeypatch, WORKERS_PROCESS_NUM="3", WORKERS_SUPERVISED="1", WORKERS_SOMETHING="x"
    )
    assert settings_module.load(str(write(tmp_path, {}))).cluster.count == 2


def test_a_file_variable_reads_a_secret_from_a_mounted_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "mongo-url"
    secret.write_text("mongodb://user:s3cret@db.example:27017/?replicaSet=rs0\n")
    _environment(monkeypatch, WORKERS_MONGO__URL_FILE=str(secret), WORKERS_JOBS_FILE=str(secret))
    monkeypatch.delenv("WORKERS_JOBS_FILE")
    settings = settings_module.load(str(write(tmp_path, {"mongo": {"url": "mongodb://file"}})))
    assert settings.mongo.url == "mongodb://user:s3cret@db.example:27017/?replicaSet=rs0"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"WORKERS_MONGO__URL_FILE": "{missing}"},
            "WORKERS_MONGO__URL_FILE: cannot read {missing}: No such file",
        ),
        (
            {"WORKERS_MONGO__URL_FILE": "{secret}", "WORKERS_MONGO__URL": "mongodb://x"},
            "WORKERS_MONGO__URL_FILE and WORKERS_MONGO__URL are both set: set one of them",
        ),
        ({"WORKERS_MONGO__URI_FILE": "{secret}"}, "WORKERS_MONGO__URI_FILE: no such setting"),
    ],
)
def test_a_bad_file_variable_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    places = {"missing": str(tmp_path / "missing"), "secret": str(tmp_path / "secret")}
    (tmp_path / "secret").write_text("mongodb://db")
    _environment(monkeypatch, **{k: v.format(**places) for k, v in variables.items()})
    with pytest.raises(SettingsError) as raised:
        settings_module.load(str(write(tmp_path, {})))
    assert message.format(**places) in str(raised.value)


@pytest.mark.parametrize(
    ("value", "jobs"),
    [("myapp.jobs", ["myapp.jobs"]), ("a, b.c", ["a", "b.c"]), ('["a", "b"]', ["a", "b"])],
)
def test_a_list_of_names_is_written_plainly_or_as_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, jobs: list[str]
) -> None:
    _environment(monkeypatch, WORKERS_JOBS=value)
    assert settings_module.load(str(write(tmp_path, {}))).jobs == jobs


def test_a_dotenv_file_can_hold_the_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # recorded as unset, so that what load_dotenv sets is removed after the test (a delenv
    # of an unset variable records nothing, and the later tests would inherit the 6)
    monkeypatch.setenv("WORKERS_CLUSTER__COUNT", "unset")
    monkeypatch.delenv("WORKERS_CLUSTER__COUNT")
    (tmp_path / ".env").write_text("WORKERS_CLUSTER__COUNT=6\n")
    settings = settings_module.load(str(write(tmp_path, {"cluster": {"count": 3}})))
    assert settings.cluster.count == 6


@pytest.mark.slow
@pytest.mark.processes
def test_a_command_takes_its_database_from_the_environment_alone(
    tmp_path: Path, mongo_url: str, db_name: str, db: Any
) -> None:
    """No settings file: the URL from a mounted secret, the database from a variable."""
    secret = tmp_path / "mongo-url"
    secret.write_text(mongo_url + "\n")
    env = workers_env(
        WORKERS_MONGO__URL_FILE=str(secret),
        WORKERS_MONGO__DATABASE=db_name,
        WORKERS_JOBS="tests.jobs",
    )
    done = run_command(workers_command("push", "RecordJob"), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert db["workers.jobs"].count_documents({"type": "RecordJob"}) == 1
    bad = run_command(
        workers_command("status"), cwd=tmp_path, env={**env, "WORKERS_CLUSTER__COUNT": "0"}
    )
    assert bad.returncode == 1
    assert "WORKERS_CLUSTER__COUNT (cluster.count)" in bad.stderr


# --- where the settings came from, and a start with nothing to run ----------------------


@pytest.mark.processes
def test_a_headless_start_with_no_jobs_package_says_how_to_name_one(tmp_path: Path) -> None:
    done = run_workers("--headless", cwd=tmp_path)  # no settings file, no WORKERS_JOBS
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "no jobs package to run" in lines[0] and "WORKERS_JOBS=myapp.jobs" in lines[0]
    assert "no file found, the defaults apply" in lines[0]
    assert not (tmp_path / ".workers").exists()  # nothing started, no database made


@pytest.mark.slow
@pytest.mark.processes
def test_a_command_says_when_no_settings_file_was_found(
    tmp_path: Path, mongo_url: str, db_name: str, db: Any
) -> None:
    env = workers_env(WORKERS_MONGO__URL=mongo_url, WORKERS_MONGO__DATABASE=db_name)
    done = run_command(workers_command("cron"), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    missing = tmp_path.resolve() / "settings.json"
    assert f"no settings file ({missing} not found): the defaults apply" in done.stderr
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"jobs": ["tests.jobs"]}))
    done = run_command(workers_command("cron"), cwd=tmp_path, env=env)
    assert "no settings file" not in done.stderr  # a file found goes without saying here


def test_a_file_variable_that_cannot_be_decoded_is_named_never_quoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "tokens"
    secret.write_text('[{"name": "ci", "sha256": "s3cr3t-hash-of-the-token"')  # cut short
    _environment(monkeypatch, WORKERS_WEB__TOKENS_FILE=str(secret))
    with pytest.raises(SettingsError) as raised:
        settings_module.load(str(write(tmp_path, {})))
    said = str(raised.value)
    assert "WORKERS_WEB__TOKENS_FILE: cannot decode the file's content for web.tokens" in said
    assert "s3cr3t" not in said
