"""bench_clients.py's arithmetic: run-by-run ratios, the best peer, goals and their table."""

from __future__ import annotations

import pytest

from cachefs.benchmark.goals import (Better, Figures, Goal, Verdict, goals_table, median_of,
                                     paired_ratio)


def test_paired_ratio_is_the_median_of_the_runs_both_have() -> None:
    mine = {0: 200.0, 1: 300.0, 2: 100.0, 3: 50.0}
    theirs = {0: 100.0, 1: 100.0, 2: 100.0}  # run 3 missing: left out
    assert paired_ratio(mine, theirs) == pytest.approx(2.0)
    assert paired_ratio(mine, {}) is None
    assert paired_ratio({0: 1.0}, {0: 0.0}) is None  # no division by a zero figure


def test_the_best_peer_is_taken_run_by_run_and_named_by_median() -> None:
    fig = Figures()
    for run, (a, b) in enumerate([(100.0, 90.0), (80.0, 120.0), (110.0, 95.0)]):
        fig.add("http", "rclone", "small_cold", run, a)
        fig.add("http", "s3fs", "small_cold", run, b)
        fig.add("http", "rclone", "ls_cold", run, a / 100)
        fig.add("http", "s3fs", "ls_cold", run, b / 100)
    best, who = fig.best_per_run("http", ["rclone", "s3fs", "httpdirfs"], "small_cold",
                                 Better.HIGHER)
    assert best == {0: 100.0, 1: 120.0, 2: 110.0} and who == "rclone"
    fastest, who = fig.best_per_run("http", ["rclone", "s3fs"], "ls_cold", Better.LOWER)
    assert fastest == pytest.approx({0: 0.9, 1: 0.8, 2: 0.95}) and who == "s3fs"
    assert fig.best_per_run("s3", ["rclone"], "small_cold", Better.HIGHER) == ({}, None)
    assert fig.median("http", "rclone", "small_cold") == 100.0
    assert median_of({}) is None


@pytest.mark.parametrize("measured, at_least, verdict", [
    (2.0, True, Verdict.MET),  # the target itself is met
    (1.99, True, Verdict.MISSED),
    (0.5, False, Verdict.MET),
    (0.51, False, Verdict.MISSED),
    (None, True, Verdict.UNKNOWN),
])
def test_a_goal_is_met_on_its_side_of_the_target(measured: float | None, at_least: bool,
                                                 verdict: Verdict) -> None:
    target = 2.0 if at_least else 0.5
    assert Goal("g", target, at_least, measured).verdict is verdict


def test_the_goals_table_shows_values_targets_verdicts_and_a_tally() -> None:
    table = goals_table([
        Goal("small files cold, http: cachefs / best peer", 2.0, True, 1.25, detail="best peer: rclone"),
        Goal("mount until it lists, http", 0.3, False, 0.25, unit="s", detail="cachefs"),
        Goal("daemon peak RSS, http", 70.0, False, None, unit="MiB"),
    ])
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["goal", "(issue", "17)"]
    first = lines[2]
    assert "1.25x" in first and ">= 2.00x" in first and "missed" in first and "rclone" in first
    assert "0.25 s" in lines[3] and "<= 0.30 s" in lines[3] and lines[3].split()[-2] == "met"
    assert "n/a" in lines[4] and "<= 70 MiB" in lines[4] and "not measured" in lines[4]
    assert lines[-1] == "1 met, 1 missed, 1 not measured"
