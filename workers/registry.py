"""Discovery of the *Job classes of the configured jobs packages.

A job's type is its class name, so the registry maps names to classes and
refuses anything that would make a name ambiguous. Nothing here ever imports
a name read from the database: a type is looked up, never imported.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType

from workers.cron import Schedule, schedules_for
from workers.errors import DiscoveryError
from workers.job import Job
from workers.limits import Limit, limits_for
from workers.settings import Settings


@dataclass(frozen=True)
class Registry:
    classes: Mapping[str, type[Job]] = field(default_factory=dict)
    schedules: list[Schedule] = field(default_factory=list)
    # the other classes the packages define: named in the error when no job class is found
    others: Mapping[str, type] = field(default_factory=dict)

    def get(self, job_type: str) -> type[Job] | None:
        return self.classes.get(job_type)

    @property
    def types(self) -> list[str]:
        return sorted(self.classes)

    def select(self, include: Sequence[str] | None, exclude: Sequence[str] = ()) -> list[str]:
        """The types a node pool runs: `include` (None: every type) less `exclude`.

        A name no class has is refused, so a typo cannot leave a pool idle for ever.
        """
        unknown = sorted((set(include or ()) | set(exclude)) - set(self.classes))
        if unknown:
            raise DiscoveryError(
                f"workers.types (--types) names {', '.join(unknown)}, which no job class is "
                f"called; the job types are {', '.join(self.types) or 'none'}"
            )
        chosen = [t for t in (self.types if include is None else sorted(set(include)))]
        chosen = [t for t in chosen if t not in exclude]
        if not chosen:
            raise DiscoveryError(
                f"workers.types leaves this node no job type to run (include: "
                f"{', '.join(include) if include is not None else 'every type'}; exclude: "
                f"{', '.join(exclude) or 'none'}; the job types are {', '.join(self.types)})"
            )
        return chosen

    def limits(self, settings: Settings) -> dict[str, Limit]:
        """Every limited type's flow control: class attributes, `workers.limits` on top."""
        overrides = {name: limit.model_dump() for name, limit in settings.workers.limits.items()}
        return limits_for(self.classes, overrides)

    def __contains__(self, job_type: object) -> bool:
        return job_type in self.classes

    def __len__(self) -> int:
        return len(self.classes)


def discover_checked(settings: Settings) -> Registry:
    """`discover`, and the node's types and the limits checked: a typo stops startup, and
    so does a headless start with no jobs package to run."""
    if settings.mode == "headless":
        require_jobs(settings)
    jobs = discover(settings.jobs)
    if settings.mode == "headless" and not jobs.classes:
        raise DiscoveryError(_no_job_classes(settings.jobs, jobs.others))
    if jobs.classes or settings.workers.types.include:  # web mode may have no job class
        jobs.select(settings.workers.types.include, settings.workers.types.exclude)
    jobs.limits(settings)
    return jobs


def require_jobs(settings: Settings) -> None:
    """Workers need a jobs package to run: none (the default) stops them, saying how."""
    if not settings.jobs:
        raise DiscoveryError(
            "no jobs package to run: name yours in settings.json "
            '("jobs": ["myapp.jobs"]) or in WORKERS_JOBS=myapp.jobs '
            f"(settings: {settings.source or 'no file found, the defaults apply'})"
        )


def _no_job_classes(packages: Sequence[str], others: Mapping[str, type]) -> str:
    """Why a headless node has nothing to run, with the classes it did find: a job class
    named `...Task` is the usual slip."""
    found = [
        f"{name} (a workers.Job: rename it {name.removesuffix('Task')}Job)"
        if issubclass(cls, Job)
        else name
        for name, cls in sorted(others.items())
    ]
    plural = "packages" if len(packages) > 1 else "package"
    return (
        f"the jobs {plural} {', '.join(packages)} defines no class whose name ends in Job; "
        f"found {', '.join(found) or 'no class at all'}"
    )


def discover(packages: Sequence[str]) -> Registry:
    """Import every module of `packages` and register its module-level *Job classes.

    Their `setup_cron` schedules are read and validated here too, so a bad one
    stops startup (CronError) in every mode.
    """
    found: dict[str, type[Job]] = {}
    others: dict[str, type] = {}
    for module in _modules(packages):
        others.update(_other_classes(module))
        for cls in _job_classes(module):
            other = found.get(cls.__name__)
            if other is not None and other is not cls:
                raise DiscoveryError(
                    f"two job classes are named {cls.__name__}: in {other.__module__} and in "
                    f"{cls.__module__} (a job's type is its class name; rename one)"
                )
            found[cls.__name__] = cls
    return Registry(dict(found), schedules_for(list(found.values())), others)


def _modules(packages: Sequence[str]) -> Iterator[ModuleType]:
    for name in packages:
        package = _import(name)
        yield package
        if not hasattr(package, "__path__"):
            continue
        # walk_packages imports subpackages itself and by default ignores their ImportError
        walk = pkgutil.walk_packages(package.__path__, prefix=f"{name}.", onerror=_import)
        for info in walk:
            if info.name.rsplit(".", 1)[-1] != "__main__":
                yield _import(info.name)


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise DiscoveryError(
            f"jobs module {name} failed to import: {type(exc).__name__}: {exc}{_where(exc)}"
        ) from exc


def _where(exc: BaseException) -> str:
    """The file and line the import failed at: the syntax error's own, else the last frame
    the traceback passed through (the module's code, or what it imported)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" (in {exc.filename}, line {exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if not _machinery(f.filename) and f.filename != __file__]
    return f" (in {ours[-1].filename}, line {ours[-1].lineno})" if ours else ""


def _own_classes(module: ModuleType) -> Iterator[tuple[str, type]]:
    """The classes defined at the module's top level (not imported into it)."""
    for name, obj in vars(module).items():
        if inspect.isclass(obj) and obj.__module__ == module.__name__ and obj.__qualname__ == name:
            yield name, obj


def _other_classes(module: ModuleType) -> Iterator[tuple[str, type]]:
    return ((name, obj) for name, obj in _own_classes(module) if not name.endswith("Job"))


def _job_classes(module: ModuleType) -> Iterator[type[Job]]:
    for name, obj in _own_classes(module):
        if not name.endswith("Job"):
            continue
        if not issubclass(obj, Job):
            raise DiscoveryError(
                f"{module.__name__}.{name} is named like a job but does not subclass "
                "workers.Job (subclass it, or rename the class)"
            )
        yield obj


def _machinery(filename: str) -> bool:
    """A frame of the import system's own, which says nothing of where the app broke."""
    return filename.startswith("<") or f"{os.sep}importlib{os.sep}" in filename
