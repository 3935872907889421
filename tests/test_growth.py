"""growth: the fit on synthetic curves (rate, plateau, interval coverage) and the command's contract."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import numpy as np
import pytest

from monolayer.growth import fit_growth
from monolayer.schema import check

FIELDS = ["schema", "version", "well", "n", "t_first", "t_last", "confluence_last", "model", "rate_per_h",
          "doubling_time_h", "capacity", "harvest_at", "hours_to_harvest", "hours_to_harvest_low",
          "hours_to_harvest_high", "eta", "fit_rmse", "flags"]
START = datetime(2024, 5, 1, 9, 0)


def logistic(hours, capacity=0.85, rate=0.05, start=0.05):
    return capacity / (1 + (capacity / start - 1) * np.exp(-rate * np.asarray(hours, dtype=float)))


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def plate(wells=("A1", "A2"), hours=range(0, 73, 12), seed=0, **curve):
    """Records of a few wells: ISO times, 'elapsed_h', confluence with 2 % noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i, well in enumerate(wells):
        for h in hours:
            value = float(logistic(h, start=0.05 + 0.02 * i, **curve) * math.exp(rng.normal(0, 0.02)))
            out.append({"well": well, "time": (START + timedelta(hours=h)).isoformat(), "elapsed_h": h,
                        "confluence": round(min(value, 1.0), 5)})
    return out


# -- the model ---------------------------------------------------------------------------------------

def test_rate_and_plateau_recovered_from_noisy_logistic():
    hours = np.arange(0.0, 161.0, 4.0)
    rng = np.random.default_rng(3)
    fit = fit_growth(hours, logistic(hours) * np.exp(rng.normal(0, 0.02, hours.size)))
    assert fit.rate == pytest.approx(0.05, rel=0.15)
    assert fit.capacity == pytest.approx(0.85, abs=0.03)
    assert fit.doubling_time == pytest.approx(math.log(2) / fit.rate)
    assert fit.residual_rmse() < 0.02


def test_interval_covers_the_truth_at_about_its_rate():
    """Simulation-based calibration: 200 logistic cultures with their plateau drawn from the prior,
    rates 0.02-0.06 per hour, 3 % noise, 48 h of 4-hourly scans; the true time to 0.6 must lie in
    the 80 % interval for 70-90 % of them."""
    covered = n = seed = 0
    hours = np.arange(0.0, 49.0, 4.0)
    while n < 200:
        rng = np.random.default_rng(seed)
        seed += 1
        capacity, rate, start = rng.beta(15, 1.5), rng.uniform(0.02, 0.06), rng.uniform(0.03, 0.1)
        clean = logistic(hours, capacity, rate, start)
        if capacity <= 0.62 or clean[-1] >= 0.55:
            continue
        truth = math.log((capacity / start - 1) / (capacity / 0.6 - 1)) / rate - hours[-1]
        crossing = fit_growth(hours, clean * np.exp(rng.normal(0, 0.03, hours.size))).crossing(0.6)
        high = math.inf if crossing.high is None else crossing.high
        covered += crossing.low is not None and crossing.low <= truth <= high
        n += 1
    assert 0.7 <= covered / n <= 0.9


def test_fit_refuses_too_few_or_unordered_points():
    with pytest.raises(ValueError):
        fit_growth(np.array([0.0, 4.0]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError):
        fit_growth(np.array([0.0, 8.0, 4.0]), np.array([0.1, 0.2, 0.3]))


# -- the command -------------------------------------------------------------------------------------

def test_contract_iso_times(cli, tmp_path):
    f = tmp_path / "scores.jsonl"
    f.write_text(jsonl(plate()))
    run = cli("growth", f, "--harvest-at", "0.7")
    assert run.code == 0, run.stderr
    assert run.stderr == ""
    a1, a2 = run.records
    assert list(a1) == FIELDS
    assert [a1["well"], a2["well"]] == ["A1", "A2"]
    assert a1["schema"] == "monolayer.growth/1" and a1["harvest_at"] == 0.7
    assert a1["n"] == 7 and a1["t_first"] == START.isoformat()
    assert a1["t_last"] == (START + timedelta(hours=72)).isoformat()
    assert a1["hours_to_harvest_low"] <= a1["hours_to_harvest"] <= a1["hours_to_harvest_high"]
    assert 0 < a1["hours_to_harvest"] < 48 and a1["flags"] == []
    eta = datetime.fromisoformat(a1["eta"])
    expected = START + timedelta(hours=72 + a1["hours_to_harvest"])
    assert abs((eta - expected).total_seconds()) <= 60
    assert a1["rate_per_h"] == pytest.approx(0.05, rel=0.3)
    assert 0 < a1["confluence_last"] < 0.7 and a1["model"] in ("logistic", "richards-2", "richards-3")
    for record in run.records:
        check("growth", record, "out:1")


def test_numeric_hours_from_stdin(cli):
    run = cli("growth", "-", "--time", "elapsed_h", "--harvest-at", "0.7", input=jsonl(plate()))
    assert run.code == 0, run.stderr
    a1 = run.records[0]
    assert a1["t_first"] == 0 and a1["t_last"] == 72
    assert a1["eta"] == pytest.approx(72 + a1["hours_to_harvest"], abs=0.01)


def test_sites_at_one_time_are_averaged(cli):
    records = plate(wells=("A1",))
    sites = []
    for r in records:  # two sites per scan, 0.01 either side of the well's value
        sites += [{**r, "site": 1, "confluence": r["confluence"] + 0.01},
                  {**r, "site": 2, "confluence": r["confluence"] - 0.01}]
    averaged = cli("growth", "-", "--harvest-at", "0.7", input=jsonl(records)).records
    by_site = cli("growth", "-", "--harvest-at", "0.7", input=jsonl(sites)).records
    assert by_site[0]["n"] == 7
    assert by_site[0]["hours_to_harvest"] == pytest.approx(averaged[0]["hours_to_harvest"], abs=0.05)
    assert by_site[0]["confluence_last"] == pytest.approx(averaged[0]["confluence_last"], abs=1e-3)


def test_groups_by_several_keys_in_order_of_appearance(cli):
    records = [{**r, "plate": p} for p in ("P2", "P1") for r in plate(wells=("B3",))]
    run = cli("growth", "-", "--by", "plate", "--by", "well", "--harvest-at", "0.6", input=jsonl(records))
    assert run.code == 0, run.stderr
    assert [(r["plate"], r["well"]) for r in run.records] == [("P2", "B3"), ("P1", "B3")]


def test_alert_within_exits_3_with_a_line_per_due_well(cli, tmp_path):
    records = plate(wells=("A1",)) + plate(wells=("C5",), capacity=0.9, rate=0.01)
    f = tmp_path / "scores.jsonl"
    f.write_text(jsonl(records))
    run = cli("growth", f, "--harvest-at", "0.7", "--alert-within", "48")
    assert run.code == 3
    assert [r["well"] for r in run.records] == ["A1", "C5"]  # every record is still written
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("monolayer: alert: well=A1: reaches 0.7 in ")
    assert "80 % interval" in lines[0]
    quiet = cli("growth", f, "--harvest-at", "0.7", "--alert-within", "1")
    assert quiet.code == 0 and quiet.stderr == ""


def test_error_records_are_skipped_and_counted(cli):
    records = plate(wells=("A1",))
    records.insert(2, {"well": "A1", "image": "x.tif", "error": "cannot read x.tif", "exit_code": 65})
    run = cli("growth", "-", "--harvest-at", "0.7", input=jsonl(records))
    assert run.code == 0 and run.records[0]["n"] == 7
    assert run.stderr == "monolayer: warning: skipped 1 error record(s)\n"


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('{"well": "A1", "time": "2024-05-01T09:00", "confluence": 45.0}',
     "field 'confluence' is 45.0, expected a number from 0 to 1"),
    ('{"well": "A1", "time": "yesterday", "confluence": 0.4}', "field 'time' is 'yesterday', not an ISO 8601 time"),
    ('{"well": "A1", "time": true, "confluence": 0.4}', "field 'time' is a boolean, not a time"),
    ('{"well": "A1", "confluence": 0.4}', "the record has no 'time' field"),
    ('{"time": "2024-05-01T09:00", "confluence": 0.4}', "the record has no 'well' field"),
    ('{"well": {"row": "A"}, "time": "2024-05-01T09:00", "confluence": 0.4}', "field 'well' is an object"),
    ('{"well": "A1", "time": 12, "confluence": 0.4}', "but "),
    ('{"well": "A1", "time": "2024-05-01T09:00+02:00", "confluence": 0.4}', "UTC offset"),
])
def test_bad_line_is_exit_65_with_file_and_line(cli, tmp_path, line, message):
    f = tmp_path / "scores.jsonl"
    f.write_text(jsonl(plate(wells=("A1",))[:2]) + line + "\n")
    run = cli("growth", f, "--harvest-at", "0.7")
    assert run.code == 65, run.stderr
    assert run.stderr.startswith(f"monolayer: error: {f}:3: ") and message in run.stderr
    assert len(run.stderr.splitlines()) == 1 and run.stdout == ""


@pytest.mark.parametrize("args", [["--harvest-at", "1.5"], ["--harvest-at", "0"], ["--harvest-at", "nan"],
                                  ["--harvest-at", "0.7", "--alert-within", "-1"],
                                  ["--harvest-at", "0.7", "--by", "capacity"]])
def test_bad_options_are_usage_errors(cli, args):
    run = cli("growth", "-", *args, input=jsonl(plate()))
    assert run.code == 2 and run.stderr.startswith("monolayer: error: ") and run.stdout == ""


def test_no_records_is_exit_66(cli):
    run = cli("growth", "-", "--harvest-at", "0.7", input=jsonl([{"well": "A1", "error": "x"}]))
    assert run.code == 66 and "no records to fit (1 error records skipped)" in run.stderr


def test_flags(cli):
    two = plate(wells=("A1",), hours=(0, 24))
    flat = [{"well": "B1", "time": h, "confluence": round(0.3 + 0.003 * ((-1) ** (h // 4)), 4)}
            for h in range(0, 73, 4)]
    done = [{"well": "C1", "time": h, "confluence": round(float(logistic(h, 0.95, 0.06, 0.1)), 4)}
            for h in range(0, 97, 8)]
    for r in two:
        r["time"] = r["elapsed_h"]
    run = cli("growth", "-", "--harvest-at", "0.7", input=jsonl(two + flat + done))
    assert run.code == 0, run.stderr
    few, still, reached = run.records
    assert few["flags"] == ["too_few_points"] and few["hours_to_harvest"] is None and few["model"] is None
    assert few["n"] == 2 and few["eta"] is None
    assert "not_growing" in still["flags"] and still["hours_to_harvest"] is None
    assert reached["flags"][0] == "reached" and "plateau" in reached["flags"]
    assert reached["hours_to_harvest"] == 0 and reached["eta"] == 96
    assert reached["capacity"] == pytest.approx(0.95, abs=0.03)


def test_level_above_the_plateau_is_never_reached(cli):
    low = [{"well": "D4", "time": h, "confluence": round(float(logistic(h, 0.6, 0.08, 0.05)), 4)}
           for h in range(0, 121, 8)]
    record = cli("growth", "-", "--harvest-at", "0.8", input=jsonl(low)).records[0]
    assert record["hours_to_harvest"] is None and record["eta"] is None
    assert "above_capacity" in record["flags"] and "plateau" in record["flags"]


def test_plot_writes_a_plate_png(cli, tmp_path):
    target = tmp_path / "plate.png"
    run = cli("growth", "-", "--harvest-at", "0.7", "--plot", target,
              input=jsonl(plate(wells=("A1", "A2", "B1", "C3"))))
    assert run.code == 0, run.stderr
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "plate.png"]  # no temporary left


def test_plot_of_other_groups_is_a_grid(cli, tmp_path):
    records = [{**r, "flask": f"T75-{r['well']}"} for r in plate(wells=("A1", "A2", "A3"))]
    target = tmp_path / "flasks.png"
    run = cli("growth", "-", "--by", "flask", "--time", "elapsed_h", "--harvest-at", "0.7", "--plot", target,
              input=jsonl(records))
    assert run.code == 0, run.stderr
    assert target.read_bytes()[:4] == b"\x89PNG"


def test_times_in_the_wrong_unit_are_an_error_record_not_a_forecast(cli, tmp_path):
    import math as _math

    lines = [{"well": "A1", "time": i * 4 * 3600, "confluence": round(0.9 / (1 + 17 * _math.exp(-0.2 * i)), 4)}
             for i in range(13)]
    lines += [{"well": "A2", "time": i * 4, "confluence": round(0.9 / (1 + 17 * _math.exp(-0.2 * i)), 4)}
              for i in range(13)]
    lines += [{"well": "A3", "time": t, "confluence": 0.0} for t in (0, 8, 16)]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    run = cli("growth", path, "--harvest-at", "0.7")
    assert run.code == 1
    a1, a2, a3 = run.records
    assert a1["exit_code"] == 65 and "seconds or minutes" in a1["error"] and "well=A1" in run.stderr
    assert "error" not in a2 and a2["capacity"] is not None
    assert a3["rate_per_h"] == 0.0 and a3["doubling_time_h"] is None
