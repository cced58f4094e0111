"""Discovery: module-level *Job subclasses of the jobs packages, registered by class name."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.errors import DiscoveryError
from workers.registry import discover


def test_module_level_job_subclasses_are_registered_by_class_name() -> None:
    registry = discover(["tests.goodjobs"])
    assert registry.types == ["DeepJob", "TopLevelJob"]
    assert registry.get("DeepJob").__module__ == "tests.goodjobs.nested.deep"  # type: ignore[union-attr]


def test_a_class_imported_into_another_module_is_registered_once() -> None:
    registry = discover(["tests.goodjobs", "tests.goodjobs.nested.deep"])
    assert len(registry) == 2


def test_the_example_app_registers_its_jobs() -> None:
    assert {"LoadRetentionJob", "FlakyJob", "AlwaysFailsJob"} <= set(discover(["app_jobs"]).types)


def test_two_classes_with_one_name_stop_startup_naming_both_modules() -> None:
    with pytest.raises(DiscoveryError) as caught:
        discover(["tests.badjobs.duplicate"])
    message = str(caught.value)
    assert "ReportJob" in message
    assert "tests.badjobs.duplicate.first" in message
    assert "tests.badjobs.duplicate.second" in message


def test_a_job_named_class_that_is_not_a_job_stops_startup() -> None:
    with pytest.raises(
        DiscoveryError,
        match=r"tests\.badjobs\.not_a_job\.things\.CleanupJob .*"
        r"does not subclass workers\.Job",
    ):
        discover(["tests.badjobs.not_a_job"])


def test_a_module_that_fails_to_import_stops_startup_naming_it() -> None:
    with pytest.raises(
        DiscoveryError,
        match=r"tests\.badjobs\.broken_import\.bad failed to import: "
        r"ModuleNotFoundError",
    ):
        discover(["tests.badjobs.broken_import"])


def test_a_broken_subpackage_is_not_silently_skipped() -> None:
    with pytest.raises(DiscoveryError, match=r"broken_subpackage\.inner failed to import"):
        discover(["tests.badjobs.broken_subpackage"])


def test_a_package_that_does_not_exist_stops_startup() -> None:
    with pytest.raises(DiscoveryError, match="no_such_jobs_package failed to import"):
        discover(["no_such_jobs_package"])


def test_a_syntax_error_in_a_jobs_package_names_its_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "typo_jobs"
    package.mkdir()
    (package / "__init__.py").write_text("from workers import Job\n\nclass TypoJob(Job)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DiscoveryError) as raised:
        discover(["typo_jobs"])
    assert f"(in {package / '__init__.py'}, line 3)" in str(raised.value)
    assert "SyntaxError" in str(raised.value)
