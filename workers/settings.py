"""settings.json + .env + WORKERS_* variables -> one typed, validated, immutable Settings.

Precedence: command-line flags > environment (WORKERS_<SECTION>__<KEY>, see
overrides) > the settings file > the defaults. Defaults live here and only here;
settings.example.json mirrors them and a test keeps the two in step.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from dotenv import load_dotenv
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from workers import limits as limits_module
from workers import overrides as overrides_module
from workers.errors import SettingsError
from workers.overrides import Overrides

SETTINGS_ENV = "WORKERS_SETTINGS"
DEFAULT_FILE = "settings.json"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Section(BaseModel):
    # strict: "2" is not a count and true is not a number; frozen: settings never change at runtime
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class MongoSettings(_Section):
    url: str | None = None  # "" (an unset ${MONGO_URL}) counts as unset
    database: str = Field("app", min_length=1)
    prefix: str = Field("workers", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    timeout: float = Field(10.0, gt=0)
    pool_size: int = Field(8, ge=1)
    # auto: no URL (mongo.url, MONGO_URL) starts the embedded server, for development;
    # never: no URL is an error at boot (production: a process that missed MONGO_URL must
    # not run on a private database of its own)
    embedded: Literal["auto", "never"] = "auto"
    embedded_path: str = ".workers/db"
    # keep the embedded server on one CPU (see embedded.keep_on_one_cpu): faster on this server
    embedded_one_cpu: bool = True
    # auto (the default): majority on a replica set or behind mongos, journaled on a
    # standalone, as `hello` says at boot;
    # journaled: a write is acknowledged once it is in the server's journal, so a crash of
    # the database process loses no pushed job and no recorded outcome;
    # majority: journaled on a majority of a replica set, so a failover rolls nothing back;
    # acknowledged: in memory only: faster, and may lose the last ~100 ms of writes on a crash.
    write_concern: Literal["auto", "journaled", "majority", "acknowledged"] = "auto"
    # false: boot only checks the indexes, and stops naming the missing ones (for a user
    # without the createIndex privilege; `workers db indexes --create` builds them)
    create_indexes: bool = True
    # seconds a boot's index build may take: on a replica set it commits once a majority
    # of the voting members built it, and a lagging majority holds it
    # (`workers db indexes --create` has no limit)
    index_build_timeout: float = Field(300.0, gt=0)


class ClusterSettings(_Section):
    count: int = Field(2, ge=1)


class QueueSettings(_Section):
    poll_interval: float = Field(1.0, gt=0)
    change_streams: bool = True
    lease: float = Field(30.0, ge=3)
    retries: int = Field(9, ge=0)
    retry_wait: float = Field(1.0, ge=0)
    backoff: Literal["exponential", "fixed"] = "exponential"
    timeout: float | None = Field(None, gt=0)


class CronSettings(_Section):
    log: bool = False
    disable: bool = False


_DAY = 86400.0


class RetentionSettings(_Section):
    """Seconds a finished job is kept (from its finish) before the TTL index removes it;
    null keeps it for ever."""

    completed: float | None = Field(7 * _DAY, gt=0)
    failed: float | None = Field(30 * _DAY, gt=0)
    cancelled: float | None = Field(30 * _DAY, gt=0)


class ShutdownSettings(_Section):
    level: Literal["soft", "normal", "hard"] = "normal"
    grace: float = Field(30.0, ge=0)


class TypesSettings(_Section):
    """The job types this node runs (a node pool, as Celery's -Q): `include` null runs
    every discovered type; `--types A,B` sets `include`."""

    include: list[str] | None = Field(None, min_length=1)
    exclude: list[str] = Field(default_factory=list)


class LimitSettings(_Section):
    """Flow control of one job type (limits.py); each key overrides the class attribute."""

    concurrency: int | None = Field(None, ge=1, description="at most this many running per process")
    global_concurrency: int | None = Field(
        None, ge=1, description="at most this many running across every process and node"
    )
    rate_limit: str | None = Field(
        None, description="at most this many starts in any window: '100/m' (/s, /h, /10s)"
    )

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, text: str | None) -> str | None:
        if text is not None:
            limits_module.parse_rate(text, "rate_limit")
        return text


class WorkersSettings(_Section):
    count: int = Field(10, ge=1)
    types: TypesSettings = TypesSettings()
    # job type -> its limits (flow control), over the class attributes
    limits: dict[str, LimitSettings] = Field(default_factory=dict)
    queue: QueueSettings = QueueSettings()
    cron: CronSettings = CronSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    retention: RetentionSettings = RetentionSettings()


ROLES = ("admin", "manager", "creator", "worker", "viewer")


# what a token's allow and deny rules name: reading (pages, GET API), pushing, working
# (taking jobs and reporting on them), and each lifecycle action
RuleAction = Literal["read", "push", "work", "pause", "resume", "cancel", "restart", "rerun",
                     "remove"]  # fmt: skip


class TokenSettings(_Section):
    """An API token of the dashboard and HTTP API: only its SHA-256 is kept
    (`workers token` makes one)."""

    name: str = Field(min_length=1, description="who holds it, as the dashboard shows")
    role: Literal["admin", "manager", "creator", "worker", "viewer"] = Field(
        description="what it may do (the dashboard page: Who may do what)"
    )
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="the token's SHA-256, hex (`workers token`)"
    )
    types: list[str] | None = Field(
        None, description="only jobs of these types: to take, push and act on (null: any)"
    )
    allow: list[RuleAction] | None = Field(
        None, description="only these actions, within the role (null: all the role has)"
    )
    deny: list[RuleAction] = Field(
        default_factory=list, description="never these actions (deny wins over allow)"
    )
    expires: AwareDatetime | None = Field(
        None, description="from then on the token is refused (ISO 8601 with a zone; null: never)"
    )

    @field_validator("expires", mode="before")
    @classmethod
    def _moment(cls, value: object) -> object:
        """JSON has no dates: an ISO 8601 text ("2027-01-31T00:00:00Z"), with its zone."""
        if not isinstance(value, str):
            return value
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 date and time") from None
        if moment.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone: add Z or +hh:mm")
        return moment


class WebSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8181, ge=1, le=65535)
    tokens: list[TokenSettings] = Field(default_factory=list)
    cache: float = Field(5.0, ge=0)
    # The Host names `workers web` answers to ("jobs.example.com", "*.example.com", "*" for
    # any); any other Host gets 400 (DNS rebinding). null: localhost, 127.0.0.1 and [::1]
    # on a loopback bind, any name elsewhere (where tokens are required).
    allowed_hosts: list[str] | None = None
    # `workers web` on a loopback bind with no tokens: a client on this machine is admin.
    # Off (or any token configured): nobody gets in without credentials.
    trust_loopback: bool = True
    # Seconds a login lasts: the browser holds a session id (never the token), which a
    # logout ends at once for every web process.
    session_ttl: float = Field(8 * 3600.0, gt=0)
    # Cookies marked Secure: null = when the request came over HTTPS (as the proxy says, if
    # it is one of forwarded_allow).
    secure_cookies: bool | None = None
    # The proxies whose X-Forwarded-Proto and X-Forwarded-For `workers web` believes: IP
    # addresses or networks ("10.0.0.0/8"), or "*" where nothing but the proxy can reach it
    # (the Kubernetes manifests: a NetworkPolicy admits only the Ingress controller).
    forwarded_allow: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    # The largest request body, in bytes (413 beyond it).
    max_body: int = Field(1_048_576, ge=1024)

    @field_validator("forwarded_allow")
    @classmethod
    def _proxies(cls, proxies: list[str]) -> list[str]:
        for proxy in proxies:
            if proxy == "*":
                continue
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f'{proxy!r} is not an IP address or network: use 10.1.2.3, 10.0.0.0/8 or "*"'
                ) from None
        return proxies

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, hosts: list[str] | None) -> list[str] | None:
        for host in hosts or []:
            wildcard = host.startswith("*") and host != "*"
            if not host or "*" in host[1:] or (wildcard and not host.startswith("*.")):
                raise ValueError(
                    f"{host!r} is not a host name or pattern: use a name, [::1], "
                    '"*.example.com" or "*"'
                )
        return hosts

    @model_validator(mode="after")
    def _names_unique(self) -> WebSettings:
        names = [token.name for token in self.tokens]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"tokens: each name once; {', '.join(twice)} appear twice")
        return self


class Settings(_Section):
    # inline: Job.push runs the job at once in the pushing process (an app's unit tests)
    mode: Literal["web", "headless", "inline"] = "web"
    mongo: MongoSettings = MongoSettings()
    # the packages of *Job classes: none by default (a headless start asks for them)
    jobs: list[str] = Field(default_factory=list)
    cluster: ClusterSettings = ClusterSettings()
    workers: WorkersSettings = WorkersSettings()
    web: WebSettings = WebSettings()
    # Not a key of the file: where it was read from, for messages and child processes.
    _source: str | None = PrivateAttr(None)

    @property
    def source(self) -> str | None:
        return self._source

    @property
    def base_dir(self) -> Path:
        """Relative paths in the settings are relative to the settings file's folder."""
        return Path(self.source).parent if self.source else Path.cwd()

    def mongo_url(self) -> str | None:
        """The configured server (mongo.url, else $MONGO_URL), or None for the embedded default.

        SettingsError: a URL that is not a MongoDB URL, or none where `mongo.embedded` is
        "never"; the message names where the URL came from and never shows a password."""
        url, where = self.mongo.url, f"mongo.url (in {self.source or 'the settings'})"
        if not url:
            url, where = os.environ.get("MONGO_URL"), "MONGO_URL"
        if url:
            check_mongo_url(url, where)
            return url
        if self.mongo.embedded == "never":
            raise SettingsError(
                "no MongoDB URL: set MONGO_URL (or mongo.url) to your server; mongo.embedded "
                'is "never", so no embedded server is started (set it to "auto" for development)'
            )
        return None

    def embedded_dir(self) -> Path:
        return (self.base_dir / self.mongo.embedded_path).resolve()


_SCHEMES = ("mongodb://", "mongodb+srv://")


def check_mongo_url(url: str, where: str) -> None:
    """The shape of a MongoDB URL, checked before a driver sees it (its errors name no
    setting): the scheme and a host. The driver checks the rest when it connects."""
    if not url.startswith(_SCHEMES):
        # only the scheme is shown: without one, the text may begin with user:password@
        begins = f"begins with {url.split('://', 1)[0] + '://'!r}" if "://" in url else "has none"
        raise SettingsError(
            f"{where} is not a MongoDB URL: it must begin with mongodb:// or mongodb+srv://, "
            f"and it {begins}"
        )
    rest = url.split("://", 1)[1]
    hosts = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if not hosts.strip(","):
        raise SettingsError(
            f"{where} names no host: write it as mongodb://host:27017/ "
            "(or mongodb://user:password@host1,host2/?replicaSet=rs0)"
        )


def settings_path(explicit: str | None = None) -> tuple[Path, bool]:
    """Where to read settings from, and whether the user asked for that file."""
    if explicit:
        return Path(explicit), True
    if os.environ.get(SETTINGS_ENV):
        return Path(os.environ[SETTINGS_ENV]), True
    return Path(DEFAULT_FILE), False


def load(
    explicit: str | None = None, *, mode: str | None = None, types: list[str] | None = None
) -> Settings:
    """Load .env, then the settings file, expand its ${VAR}s, lay the WORKERS_*
    variables over it and validate.

    A missing ./settings.json means defaults; a file the user named
    (--settings or WORKERS_SETTINGS) must exist.
    """
    load_dotenv(Path.cwd() / ".env", override=False)
    path, required = settings_path(explicit)
    raw = _read(path) if required or path.exists() else {}
    source = str(path.resolve()) if (required or path.exists()) else None
    flags: dict[str, Any] = {"mode": mode} if mode is not None else {}
    if types is not None:
        flags["workers"] = {"types": {"include": types}}
    return validate(raw, source=source, environment=read_overrides(), flags=flags)


def read_overrides() -> Overrides:
    """The WORKERS_<SECTION>__<KEY> variables of this process's environment."""
    return overrides_module.read(Settings)


def validate(
    raw: Any,
    *,
    source: str | None = None,
    environment: Overrides | None = None,
    flags: dict[str, Any] | None = None,
) -> Settings:
    """The settings from a file's content, the environment's overrides over it, and the
    command line's flags (nested like the file) over both; an error names the key and
    where it was set."""
    environment = environment or Overrides()
    where = " and ".join(
        [source or "the default settings"] + (["the environment"] if environment.values else [])
    )
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: the top level must be a JSON object")
    merged = overrides_module.merge(_expand(raw), environment.values)
    merged = overrides_module.merge(merged, flags or {})
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise SettingsError(f"invalid settings in {where}: {_describe(exc, environment)}") from None
    settings._source = source
    return settings


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(
            f"settings file {path} is not valid JSON: {exc.msg} "
            f"at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path}: the top level must be a JSON object")
    return data


def _expand(value: Any) -> Any:
    """Replace ${VAR} in every string with the environment's value ('' when unset).

    Keys starting with "//" are comments (JSON has none), so settings.example.json
    can be copied as it is.
    """
    if isinstance(value, str):
        return _VAR.sub(lambda m: os.environ.get(m.group(1), ""), value)
    if isinstance(value, dict):
        return {k: _expand(item) for k, item in value.items() if not str(k).startswith("//")}
    if isinstance(value, list):
        return [_expand(item) for item in value]
    return value


def _describe(exc: ValidationError, environment: Overrides) -> str:
    parts = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        variable = environment.variable_for(error["loc"])
        if variable:
            key = f"{variable} ({key})"
        detail = error["msg"]
        if error["type"] != "extra_forbidden" and "input" in error:
            detail += f" (got {json.dumps(error['input'], default=str)})"
        if error["type"] == "extra_forbidden":
            detail = "unknown key" + _did_you_mean(error["loc"])
        parts.append(f"{key}: {detail}")
    return "; ".join(parts)


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """ "; did you mean cluster?" for a misspelt key (`cluser`), from the keys its section
    has; "" when none is close."""
    section: Any = Settings
    for part in loc[:-1]:
        if get_origin(section) in (dict, list):  # a map's key or a list's index: its values'
            section = get_args(section)[-1]
            continue
        fields = getattr(section, "model_fields", {})
        if part not in fields:
            return ""
        section = fields[part].annotation
    known = list(getattr(section, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.5)
    return f"; did you mean {close[0]}?" if close else ""
