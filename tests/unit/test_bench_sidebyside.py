"""Issue 17's goals as bench_clients.py judges them, on made-up figures."""

from __future__ import annotations

from cachefs.benchmark.goals import Figures, Goal, Verdict
from cachefs.benchmark.peers import PEERS
from cachefs.benchmark.sidebyside import CACHEFS, PROXIED, issue_goals, proxy_table, source_table
from cachefs.benchmark.sources import Source

HTTP, HTTPS, S3 = (Source(n, n.upper(), "") for n in ("http", "https", "s3"))
ALL_PEERS = list(PEERS.values())


def by_text(goals: list[Goal]) -> dict[str, Goal]:
    return {g.text: g for g in goals}


def figures() -> Figures:
    fig = Figures()
    for run in (0, 1):
        # HTTP small files cold: cachefs 1000, rclone 400 or 600, httpdirfs 10.
        fig.add("http", CACHEFS, "small_cold", run, 1000.0)
        fig.add("http", "rclone", "small_cold", run, 400.0 if run == 0 else 600.0)
        fig.add("http", "httpdirfs", "small_cold", run, 10.0)
        fig.add("http", CACHEFS, "ls_cold", run, 0.1)
        fig.add("http", "rclone-streams", "ls_cold", run, 0.25)
        fig.add("http", CACHEFS, "mount", run, 0.2 + run)  # median 0.7 s
        fig.add("https", CACHEFS, "small_cold", run, 700.0)
        fig.add("http", PROXIED, "big_cold", run, 90.0)
        fig.add("http", CACHEFS, "big_cold", run, 100.0)
        fig.add("http", "curl", "big_cold", run, 200.0)
        fig.add("http", "curl-proxy", "big_cold", run, 150.0)
        fig.add("http", "curl", "small_cold", run, 2000.0)
        fig.add("http", "curl-proxy", "small_cold", run, 50.0)
    return fig


def test_goals_against_the_best_peer_take_it_run_by_run() -> None:
    goals = by_text(issue_goals(figures(), [HTTP, HTTPS, S3], ALL_PEERS, proxied=True))
    small = goals["small files cold, http: cachefs / best peer"]
    # Runs: 1000/400 and 1000/600; the median of 2.5 and 1.67.
    assert abs(small.measured - (2.5 + 1000 / 600) / 2) < 1e-9  # type: ignore[operator]
    assert small.verdict is Verdict.MET and "rclone" in small.detail
    ls_cold = goals["ls -lR cold, http: cachefs / best peer (time)"]
    assert ls_cold.measured == 0.4 and ls_cold.verdict is Verdict.MET
    assert goals["mount until it lists, http"].verdict is Verdict.MISSED
    assert goals["HTTPS / HTTP, small files cold"].measured == 0.7
    assert goals["through tinyproxy / direct, http, big file cold"].measured == 0.9
    # Nothing measured over S3: said so, never judged met.
    assert goals["small files cold, s3: cachefs / best peer"].verdict is Verdict.UNKNOWN
    # No https goal for small files cold against peers (the issue asks HTTP and S3).
    assert "small files cold, https: cachefs / best peer" not in goals


def test_cachefs_alone_has_no_goal_against_peers_and_no_proxy_goal_without_proxy() -> None:
    texts = by_text(issue_goals(figures(), [HTTP], [], proxied=False))
    assert not any("best peer" in t for t in texts)
    assert not any("tinyproxy" in t for t in texts)
    assert "small files warm, http: cachefs passthrough / native" in texts
    assert "HTTPS / HTTP, big file cold" not in texts  # needs both sources


def test_the_tables_show_medians_ratios_and_dashes_for_what_was_not_measured() -> None:
    table = source_table(figures(), HTTP, [CACHEFS, "rclone", "httpdirfs"])
    small = next(line for line in table.splitlines() if line.startswith("small files cold"))
    assert small.split()[4:8] == ["1,000", "500", "10", "2.08x"]
    warm = next(line for line in table.splitlines() if line.startswith("small files warm"))
    assert warm.split()[4:7] == ["-", "-", "-"]
    big = next(line for line in table.splitlines() if line.startswith("big file cold"))
    assert "curl 200" in big and big.rstrip().endswith("0.50x")
    proxy = proxy_table(figures(), ["http"])
    assert "0.90x" in proxy and "0.75x" in proxy
    ceiling = next(line for line in proxy.splitlines() if "curl small files" in line)
    assert ceiling.split()[-3:] == ["2,000", "50", "0.03x"]
