"""Report files: three files written atomically, UTF-8 with \\n line ends."""

from __future__ import annotations

from pathlib import Path

from torchslim.report import Report, load_report


def test_save_writes_three_files_atomically(tmp_path: Path, full_report: Report) -> None:
    out = tmp_path / "run" / "report"
    report = full_report
    paths = report.save(out)
    assert set(paths) == {"md", "html", "json"}
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]
    assert paths["md"].read_text(encoding="utf-8") == report.to_markdown()
    # saving again replaces the files and still leaves no temporary files behind
    Report("second").save(out)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]
    assert load_report(out).title == "second"


def test_saved_bytes_are_the_utf8_renderings(tmp_path: Path, full_report: Report) -> None:
    report = full_report
    report.title = "Prune «LeNet» ×2"
    paths = report.save(tmp_path)
    assert paths["json"].read_bytes() == report.to_json().encode("utf-8")
    assert paths["md"].read_bytes() == report.to_markdown().encode("utf-8")
    assert paths["html"].read_bytes() == report.to_html().encode("utf-8")
    assert b"\r\n" not in paths["md"].read_bytes()
