"""Package discovery: every package under cachefs/, plus migrations/.

pyproject.toml holds the metadata. setuptools' own discovery cannot rename a
top-level folder into the package, so the list is computed here, never typed.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["cachefs", "cachefs.*"]) + ["cachefs.migrations"])
