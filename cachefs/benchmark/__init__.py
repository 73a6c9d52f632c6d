"""`cachefs bench`: what cachefs does to reads, measured on this machine.

The same reads are timed in several modes (cold, warm through the daemon,
warm passthrough, page cache hot, and native reads of the cache files), each
repeated and summarised as median, min and max, then printed as a table with
ratios to native, written as JSON and drawn as a PNG chart.

    model.py    modes, figures and the results container
    system.py   page cache, timed reads, mounts, daemon RSS, cache files
    runner.py   the built-in default run and the run on files of a mount
    report.py   the table and the JSON document
    chart.py    the PNG
"""
