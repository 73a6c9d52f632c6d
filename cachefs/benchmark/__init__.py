"""`cachefs bench`: what cachefs does to reads, measured on this machine.

The same reads are timed in several modes (cold, warm through the daemon,
warm passthrough, page cache hot, and native reads of the cache files), each
repeated and summarised as median, min and max, then printed as a table with
ratios to native, written as JSON and drawn as a PNG chart.

    model.py    modes, figures and the results containers
    system.py   page cache, timed reads, mounts, the daemons (RSS, counters,
                log problems), cache files
    data.py     generated files, files found in a mount, the local store
    rig.py      a run's work folder, mounts and store, removed at the end
    runner.py   the built-in default run and the run on files of a mount
    report.py   the table and the JSON document
    chart.py    the PNG

bench/bench_clients.py's side-by-side run of cachefs and its peers:

    sources.py     HTTP, HTTPS (a generated CA) and S3 (SeaweedFS) stores, curl's reads
    peers.py       rclone, s3fs, httpdirfs: their mount commands, run as children
    proxy.py       tinyproxy, for the through-a-proxy figures
    proctree.py    a client's process tree: CPU time and peak RSS from /proc
    goals.py       figures by run, run-by-run ratios, goals and their table
    sidebyside.py  its figures, tables and issue 17's goals

The longer benchmarks in bench/ are scripts on top of these modules: they
keep their own measurements and tables, and share everything else here.
"""
