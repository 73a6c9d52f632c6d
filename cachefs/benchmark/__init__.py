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

The longer benchmarks in bench/ are scripts on top of these modules: they
keep their own measurements and tables, and share everything else here.
"""
