"""`adaptjobs report` and the BD-rate line of `adaptjobs status`, on a small real run: the shipped model at
qualities 1-4 (4-point curves), 2 frames of the real carphone sample, `none` and a decoder LoRA that always
sends its update (so payload files exist), x264 and x265 anchors (units of method none on those codecs), in an
embedded Ray.

No number measured with the shipped weights is written here (they are retrained): every check compares the
report with the run's own files, or with a property that holds whatever the weights."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from adaptjobs.bdrate import bd_rate
from adaptjobs.cli import EXIT_INPUT_ERROR, main
from adaptjobs.report_bdrate import curve_bd_rate
from adaptjobs.report_data import METRICS, collect_run
from schemas.adapt import AdaptResult
from schemas.report import UnitRow
from workers.run_layout import DONE, write_failed

VIDEO = "carphone"
METHODS = ("none", "decoder-lora")
CODECS = ("x264", "x265")
QUALITIES = (1, 2, 3, 4)
CURVES = ("ssf/none", "ssf/decoder-lora", "x264/none", "x265/none")


def unit_result(run_dir: Path, codec: str, method: str, quality) -> AdaptResult:
    return AdaptResult.model_validate_json((run_dir / "units" / VIDEO / codec / method / f"q{quality:g}" / "result.json")
                                           .read_text())


def crfs(run_dir: Path, codec: str) -> list:
    return sorted(float(p.name[1:]) for p in (run_dir / "units" / VIDEO / codec / "none").iterdir())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, carphone_path) -> Path:
    """One complete run for the module (about 20 s on 2 cores). Tests that damage a run copy it first."""
    ray = pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("report")
    videos = root / "videos"
    videos.mkdir()
    shutil.copy(carphone_path, videos / f"{VIDEO}.mp4")
    run = root / "run"
    # address="local": a new embedded Ray even if another cluster runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code = main(["submit", str(videos), "--run", str(run), "--frames", "2", "--qualities", "1,2,3,4",
                     "--methods", ",".join(METHODS), "--set", "decoder-lora:training.epochs=1",
                     "--set", "decoder-lora:training.crop=128", "--set", "decoder-lora:send_update=always",
                     # a coarse fixed step and no minimum step count: the grid-tied default moves the 2-frame
                     # tiny-run LoRA by less than a grid cell in one epoch, and a zero update is never sent
                     "--set", "decoder-lora:training.learning_rate=0.02", "--set", "decoder-lora:training.min_steps=0",
                     "--anchors", ",".join(CODECS), "--no-progress"])
    finally:
        ray.shutdown()
    assert code == 0, "the run did not complete"
    return run


@pytest.fixture(scope="module")
def report_dir(run_dir) -> Path:
    assert main(["report", str(run_dir)]) == 0
    return run_dir / "report"


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report"))
    return copy


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_report_writes_every_file(report_dir):
    for name in ("report.md", "report.html", "summary.csv", "summary.json", "bd_rate.csv",
                 f"plots/rd-{VIDEO}.png", "plots/overhead.png"):
        path = report_dir / name
        assert path.is_file() and path.stat().st_size > 0, name
    for name in (f"plots/rd-{VIDEO}.png", "plots/overhead.png"):
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in CURVES:
        assert (report_dir / "compressai" / VIDEO / f"{name}.json").is_file()
    assert not any(p.name.endswith(".tmp") for p in report_dir.rglob("*"))  # atomic writes


def test_summary_csv_equals_the_result_files_and_the_sizes_on_disk(run_dir, report_dir):
    rows = [UnitRow.model_validate({k: (v if v != "" else None) for k, v in row.items()})
            for row in read_csv(report_dir / "summary.csv")]
    adapt = [r for r in rows if r.codec == "ssf"]
    assert sorted((r.method, r.quality) for r in adapt) == sorted((m, q) for m in METHODS for q in QUALITIES)
    for row in adapt:
        unit = run_dir / row.unit
        result = AdaptResult.model_validate_json((unit / "result.json").read_text())
        payload = unit / f"{VIDEO}.payload"
        assert row.state == "done" and row.error is None
        assert row.bits_file_bytes == result.bytes_written == (unit / f"{VIDEO}.bits").stat().st_size
        assert row.payload_bytes == result.payload_bytes == (payload.stat().st_size if payload.exists() else 0)
        assert row.total_bytes == row.bits_file_bytes + row.payload_bytes
        for column, field in (("bpp_without_payload", "bpp_without_payload"), ("bpp_with_payload", "bpp_with_payload"),
                              ("payload_share_fraction", "payload_share"), ("psnr_rgb_db", "psnr_rgb"),
                              ("psnr_yuv_db", "psnr_yuv"), ("ms_ssim_rgb", "ms_ssim_rgb"),
                              ("adapt_seconds", "adapt_seconds"), ("train_seconds", "train_seconds")):
            assert getattr(row, column) == getattr(result, field), column  # exact: floats round-trip
        assert (row.intra_bits, row.motion_bits, row.residual_bits, row.container_bits) == \
            (result.bits.intra, result.bits.motion, result.bits.residual, result.bits.container)
        assert row.decision == result.decision and row.update_sent == result.update_sent
        pixels = row.width * row.height * row.frames
        assert row.bpp_with_payload == pytest.approx(row.total_bytes * 8 / pixels)
    assert any(r.payload_bytes > 0 for r in adapt if r.method == "decoder-lora")  # the payload check was not vacuous
    assert all(r.payload_bytes == 0 for r in adapt if r.method == "none")

    for codec, suffix in zip(CODECS, (".h264", ".hevc")):
        mine = {r.quality: r for r in rows if r.codec == codec}
        assert sorted(mine) == crfs(run_dir, codec) and all(r.method == "none" for r in mine.values())
        for crf, row in mine.items():
            result = unit_result(run_dir, codec, "none", crf)
            stream = run_dir / row.unit / f"{VIDEO}{suffix}"
            assert (row.bits_file_bytes, row.bpp_with_payload, row.psnr_rgb_db, row.psnr_yuv_db, row.psnr_y_db,
                    row.ms_ssim_rgb) == (stream.stat().st_size, result.bpp_with_payload, result.psnr_rgb,
                                         result.psnr_yuv, result.psnr_y, result.ms_ssim_rgb)
            assert row.payload_bytes == 0 and row.intra_bits is None


def test_bd_rate_of_none_against_itself_is_zero(run_dir):
    data = collect_run(run_dir)
    none = data.curve(VIDEO, "ssf/none")
    assert len(none.points) == len(QUALITIES)
    computed = 0
    for metric in METRICS.values():
        percent, overlap, _ = curve_bd_rate(none, none, metric)
        if percent is not None:  # None only if this model's curve is not monotone on the metric
            assert percent == pytest.approx(0.0, abs=1e-9) and overlap == 1.0
            computed += 1
    assert computed >= 1


def _independent_bd_rate(reference: list[tuple[float, float]], test: list[tuple[float, float]]) -> float | None:
    try:
        return bd_rate(reference, test).percent
    except ValueError:
        return None


def test_bd_rates_use_the_rate_with_payload_from_the_result_files(run_dir, report_dir):
    """Recompute the per-video BD-rates from result.json alone: the report must use bpp_with_payload and
    the anchors' rates, on PSNR-RGB."""
    def method_points(method: str, rate: str) -> list[tuple[float, float]]:
        results = [unit_result(run_dir, "ssf", method, q) for q in QUALITIES]
        return [(getattr(r, rate), r.psnr_rgb) for r in results]

    curves = {f"ssf/{m}": method_points(m, "bpp_with_payload") for m in METHODS}
    for codec in CODECS:
        points = [unit_result(run_dir, codec, "none", crf) for crf in crfs(run_dir, codec)]
        curves[f"{codec}/none"] = sorted((r.bpp_with_payload, r.psnr_rgb) for r in points)
    rows = [r for r in read_csv(report_dir / "bd_rate.csv") if r["video"] == VIDEO]
    assert [(r["method"], r["reference"]) for r in rows] == [
        ("ssf/none", "x264/none"), ("ssf/none", "x265/none"), ("ssf/decoder-lora", "ssf/none"),
        ("ssf/decoder-lora", "x264/none"), ("ssf/decoder-lora", "x265/none"), ("x264/none", "x265/none")]
    for row in rows:
        expected = _independent_bd_rate(curves[row["reference"]], curves[row["method"]])
        if expected is None:
            assert row["bd_rate_percent"] == "" and row["warning"].startswith("not computed")
        else:
            assert float(row["bd_rate_percent"]) == pytest.approx(expected, rel=1e-9)
    without = _independent_bd_rate(curves["ssf/none"], method_points("decoder-lora", "bpp_without_payload"))
    with_payload = next(r for r in rows if r["method"] == "ssf/decoder-lora" and r["reference"] == "ssf/none")
    if without is not None and with_payload["bd_rate_percent"]:
        assert float(with_payload["bd_rate_percent"]) > without  # the payload is part of the rate
    averages = [r for r in read_csv(report_dir / "bd_rate.csv") if r["video"] == "(average)"]
    assert all(r["videos_total"] == "1" for r in averages) and len(averages) == len(rows)


def test_report_md_has_the_tables_and_html_is_self_contained(report_dir):
    markdown = (report_dir / "report.md").read_text()
    assert f"## Video {VIDEO}" in markdown
    assert "| codec | method | q | state | bpp without payload | bpp with payload | payload bytes |" in markdown
    for method in METHODS:
        for quality in QUALITIES:
            assert f"| ssf | {method} | {quality} | done |" in markdown
    assert "| x264 | none | 22 | done |" in markdown
    assert "## Average BD-rate over videos (PSNR-RGB)" in markdown
    assert "| ssf/decoder-lora | ssf/none |" in markdown and "| ssf/decoder-lora | x265/none |" in markdown
    assert f"![{VIDEO}: rate" in markdown and "(plots/overhead.png)" in markdown
    assert "None: every unit is done." in markdown

    page = (report_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # the RD plot and the overhead plot, embedded
    assert 'src="plots/' not in page and "http://" not in page and "https://" not in page
    assert "<table>" in page and f"<h2>Video {VIDEO}</h2>" in page


def test_summary_json_is_compressai_results_format(report_dir):
    curves = json.loads((report_dir / "summary.json").read_text())
    assert [c["name"] for c in curves] == list(CURVES)
    for curve in curves:
        results = curve["results"]
        assert VIDEO in curve["description"]
        lengths = {len(values) for values in results.values()}
        assert len(lengths) == 1  # one value per point in every list
        assert results["bpp"] == sorted(results["bpp"])
        for metric in ("psnr-rgb", "psnr-yuv", "ms-ssim-rgb", "ms-ssim"):
            assert all(isinstance(v, float) for v in results[metric])
        # what compressai.utils.plot reads from a single file
        single = json.loads((report_dir / "compressai" / VIDEO / f"{curve['name']}.json").read_text())
        assert single == curve and "bpp" in single["results"] and "psnr-rgb" in single["results"]
    lora = next(c for c in curves if c["name"] == "ssf/decoder-lora")["results"]
    assert "rate includes the weight payload" in next(c for c in curves if c["name"] == "ssf/decoder-lora")["description"]
    assert sorted(lora["quality"]) == list(QUALITIES)
    assert all(b >= w for b, w in zip(lora["bpp"], lora["bpp-without-payload"]))


def test_ms_ssim_metric(run_dir, tmp_path, capsys):
    out = tmp_path / "ms"
    assert main(["report", str(run_dir), "--metric", "ms-ssim", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert {r["metric"] for r in read_csv(out / "bd_rate.csv")} == {"ms-ssim"}
    markdown = (out / "report.md").read_text()
    assert "-10 log10(1 - MS-SSIM)" in markdown and "BD-rate (MS-SSIM)" in markdown
    assert (out / f"plots/rd-{VIDEO}.png").is_file()
    data = collect_run(run_dir)
    metric = METRICS["ms-ssim"]
    row = data.curve(VIDEO, "ssf/none").points[0]
    assert metric.value(row) == pytest.approx(-10 * math.log10(1 - row.ms_ssim_rgb))


def test_partial_run_lists_missing_and_failed_units(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path)
    (run / "units" / VIDEO / "ssf" / "decoder-lora" / "q3" / DONE).unlink()           # interrupted: no marker
    x265 = sorted((run / "units" / VIDEO / "x265" / "none").iterdir())
    for unit in x265:
        (unit / DONE).unlink()
        write_failed(unit, "x265 <crashed> & left no result", "error", 1)
    total = 2 * len(QUALITIES) + 2 * len(x265)
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert f"{total - 1 - len(x265)} of {total} units done, {len(x265)} failed, 1 missing" in capsys.readouterr().out
    report = run / "report"
    rows = {r["unit"]: r for r in read_csv(report / "summary.csv")}
    missing = rows[f"units/{VIDEO}/ssf/decoder-lora/q3"]
    assert missing["state"] == "missing" and "interrupted" in missing["error"] and missing["bpp_with_payload"] == ""
    failed = rows[str(x265[0].relative_to(run))]
    assert failed["state"] == "failed" and "x265 <crashed>" in failed["error"]
    assert sum(1 for r in rows.values() if r["state"] == "done") == 7 + len(x265)  # 7 SSF units + the x264 CRFs

    markdown = (report / "report.md").read_text()
    section = markdown.split("## Units failed or missing")[1]
    assert f"units/{VIDEO}/ssf/decoder-lora/q3" in section and str(x265[0].relative_to(run)) in section
    assert "This run is incomplete" in markdown
    bd = {(r["method"], r["reference"]): r for r in read_csv(report / "bd_rate.csv") if r["video"] == VIDEO}
    assert "q3 missing" in bd[("ssf/decoder-lora", "ssf/none")]["warning"]
    assert bd[("ssf/none", "x265/none")]["bd_rate_percent"] == ""
    assert "x265/none has 0 finished points" in bd[("ssf/none", "x265/none")]["warning"]
    assert [c["name"] for c in json.loads((report / "summary.json").read_text())] == list(CURVES[:3])
    page = (report / "report.html").read_text()
    assert "x265 &lt;crashed&gt; &amp; left" in page and "<crashed>" not in page  # escaped

    capsys.readouterr()
    assert main(["status", str(run)]) == 0
    assert "BD-rate" not in capsys.readouterr().out  # only for a complete run


def test_a_run_with_nothing_done_reports_that(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    for marker in run.rglob(DONE):
        marker.unlink()
    assert main(["report", str(run)]) == 0
    markdown = (run / "report" / "report.md").read_text()
    assert "No unit of this run has finished yet" in markdown and "0 of 22 done" in markdown
    assert json.loads((run / "report" / "summary.json").read_text()) == []
    assert not (run / "report" / "plots").exists()
    assert {r["state"] for r in read_csv(run / "report" / "summary.csv")} == {"missing"}


def test_status_prints_the_bd_rate_line_on_a_complete_run(run_dir, capsys):
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("BD-rate (PSNR-RGB, average over 1 video): ssf/decoder-lora vs ssf/none ")
    assert "vs x264/none" in last and "vs x265/none" in last and "; ssf/none vs x264/none" in last


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path) in err and "no job.json" in err
    assert not (tmp_path / "report").exists()


def test_report_refuses_an_output_that_is_a_file(run_dir, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["report", str(run_dir), "--out", str(target)]) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(target) in err and "folder" in err


def test_a_done_unit_with_an_unreadable_result_is_listed_as_failed(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    result = run / "units" / VIDEO / "ssf" / "none" / "q1" / "result.json"
    result.write_text('{"truncated": ')
    assert main(["report", str(run)]) == 0
    row = next(r for r in read_csv(run / "report" / "summary.csv") if r["unit"] == f"units/{VIDEO}/ssf/none/q1")
    assert row["state"] == "failed" and str(result) in row["error"] and "not a valid result" in row["error"]
    assert f"units/{VIDEO}/ssf/none/q1" in (run / "report" / "report.md").read_text().split("## Units failed or missing")[1]
