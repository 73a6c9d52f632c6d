"""Fixtures of the e2e tier: the generated tree, an nginx store over it, a
SeaweedFS S3 server, and real mounts.

The tree (with a file past 256 MiB) and nginx are built once per session. The
`mount` fixture is a `Mounter` (tests/support/mounter.py): it runs the real
`cachefs mount` and always unmounts afterwards, even when a test killed the
daemon, so no test leaves a mount behind. Tests import what they need of it
(`Mounter`, `Tree`, `wait_until`...) from `mounter`, never from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cachefs.localstore import NginxStore, make_tree, test_spec
from cachefs.localstore.seaweed import SeaweedStore
from mounter import Mounter, Tree
from s3_fixtures import SEAWEED_PUBLIC_BUCKET

# Variables a user's session may set that change where cachefs keeps things or
# how it reaches a store; the tests' children start without them.
USER_VARIABLES = (
    "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR",
    "http_proxy", "https_proxy", "all_proxy", "no_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
)



# -- the environment -----------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def fresh_user_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test and its children run as a new user would: a new, empty HOME
    and none of USER_VARIABLES. Nothing in the machine's ~/.cache/cachefs,
    ~/.aws or proxy settings can change an outcome, and a command run without
    --cache-dir fills no real home. Yields that HOME."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        for name in USER_VARIABLES:
            patch.delenv(name, raising=False)
        yield home


# -- the tree and the store ----------------------------------------------------


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    root = tmp_path_factory.mktemp("tree")
    spec = test_spec()
    return Tree(root=root, spec=spec, hashes=make_tree(root, spec))


@pytest.fixture(scope="session")
def store(tree: Tree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStore]:
    with NginxStore(tree.root, tmp_path_factory.mktemp("nginx")) as nginx:
        yield nginx


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedStore]:
    """One SeaweedFS server (a real S3 store) for the whole session; each
    test module fills buckets of its own."""
    workdir = tmp_path_factory.mktemp("seaweed")
    with SeaweedStore(workdir, public_buckets=[SEAWEED_PUBLIC_BUCKET]) as server:
        yield server


@pytest.fixture
def access_log(store: NginxStore) -> NginxStore:
    """The store with its access log emptied, for tests that read the log."""
    store.clear_access_log()
    return store


# -- mounts --------------------------------------------------------------------

_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Attach the daemon logs of a failed test's mounts to its report."""
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    mounter = getattr(item, "funcargs", {}).get("mount")
    if report.failed and report.when == "call" and isinstance(mounter, Mounter):
        tails = mounter.log_tails()
        if tails:
            report.sections.append(("cachefs daemon logs", tails))
    return report


@pytest.fixture
def mount(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mounter]:
    """`mount(source_url, cache_dir=None, *extra_args) -> mountpoint`, unmounted at teardown."""
    mounter = Mounter(tmp_path)
    try:
        yield mounter
    finally:
        mounter.close()
    # Most tests fill a cache with the 256 MiB file; pytest keeps several runs'
    # temp dirs, so drop the caches of passing tests (a failure keeps them).
    if not request.node.stash.get(_CALL_FAILED, True):
        mounter.remove_caches()

