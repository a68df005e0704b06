from __future__ import annotations

import json
from pathlib import Path

import pytest

from natkit.cli._common import HTML_MARKER, check_output, emit_json, not_a_file
from natkit.errors import UsageError


def test_stdout_and_unset_need_no_file() -> None:
    assert check_output("--json", None) is None
    assert check_output("--json", "-") is None
    assert check_output("--prometheus", "-", kind="prom") is None


@pytest.mark.parametrize("kind", ["html", "pcap"])
def test_a_page_or_a_capture_never_goes_to_stdout(tmp_path: Path, kind: str) -> None:
    """'-' is stdout only where stdout can take it; elsewhere it would be a file named '-'."""
    with pytest.raises(UsageError, match="writes a file, not stdout"):
        check_output(f"--{kind}", "-", kind=kind)
    foreign = tmp_path / "notes.txt"
    foreign.write_text("mine\n")
    with pytest.raises(UsageError) as err:
        check_output(f"--{kind}", str(foreign), kind=kind)
    assert "for stdout" not in str(err.value)  # no advice that cannot work


def test_an_input_file_is_never_an_output(tmp_path: Path) -> None:
    topo = tmp_path / "victim.toml"
    topo.write_text("[lab]\n")
    with pytest.raises(UsageError, match="not a natkit JSON report"):
        check_output("--json", str(topo))
    report = tmp_path / "old.json"
    report.write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(UsageError, match="input of this command"):
        check_output("--json", str(report), inputs=[str(report)])
    assert topo.read_text() == "[lab]\n"


def test_a_previous_report_may_be_replaced(tmp_path: Path) -> None:
    report = tmp_path / "lab.json"
    report.write_text(json.dumps({"schema_version": 1, "pass": True}))
    assert check_output("--json", str(report)) == report
    emit_json(str(report), {"schema_version": 2})
    assert json.loads(report.read_text()) == {"schema_version": 2}
    page = tmp_path / "lab.html"
    page.write_text(f"<html><head>{HTML_MARKER}</head></html>")
    assert check_output("--html", str(page), kind="html") == page
    page.write_text("<html>someone else's page</html>")
    with pytest.raises(UsageError, match="not a natkit HTML report"):
        check_output("--html", str(page), kind="html")


def test_directories_and_unwritable_places_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a regular file"):
        check_output("--json", str(tmp_path))
    with pytest.raises(UsageError):
        check_output("--json", "/proc/no-such-dir/x.json")


def test_not_a_file_says_missing_or_what_is_there(tmp_path: Path) -> None:
    assert not_a_file(str(tmp_path / "nope.pem")) == "no such file"
    assert not_a_file("/dev/zero").startswith("not a regular file")
    assert not_a_file(str(tmp_path)).startswith("not a regular file")
