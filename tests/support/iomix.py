"""Randomized I/O against a cachefs mount, run as a separate process.

`python iomix.py mix ...` interleaves open / pread / mmap (MAP_SHARED and
MAP_PRIVATE) / reads through mappings / munmap / close / state xattr checks
on files of a mount, driven by one seeded PRNG, and compares every byte it
reads with the source file read directly from the tree on disk. Most opens go
to a window of a few files that slides over the list as the steps go by, so
fresh (absent) files keep arriving and completing all through the run, while
handles and mappings on older ones are still alive. One worker also reads the
files sequentially to completion (`--sequential`), keeping to the window.

`python iomix.py verify ...` opens one file, reads it whole, maps it shared
and private, and checks every byte (used by the open-mode rule test as "another
process").

Both print one JSON object on stdout and exit 0 on success; on an OSError or a
wrong byte they print {"ok": false, ...} with the step, seed, file and offset
and exit 1. Before each step the worker appends the step to `--trace`, so a
worker killed by SIGBUS (a failed page fault in a mapping) still says where.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import math
import mmap
import os
import random
import re
import sys
import traceback
from collections import Counter
from dataclasses import dataclass

MiB = 1024 * 1024
CHUNK = 8 * MiB  # the daemon's chunk size: offsets near its edges are favoured
PAGE = mmap.ALLOCATIONGRANULARITY
STATE_XATTR = "user.cachefs.state"

MAX_FDS = 3  # open descriptors per worker
MAX_MAPS = 3  # live mappings per worker
MAX_READ = 3 * MiB
MAX_MAP_LEN = 16 * MiB
SEQ_PIECE = 4 * MiB

STATE_RE = re.compile(r"^(absent|complete|partial (\d+)/(\d+)|passthrough opens=(\d+))$")


class Failure(Exception):
    """A wrong byte, or a state the daemon must never report."""


@dataclass(eq=False)
class Handle:
    hid: int
    rel: str
    fd: int | None
    # Whether the daemon answered this open in passthrough: the state xattr
    # read right after the open says so exactly, because the daemon never
    # lets passthrough and other handles coexist on an inode (openmode.py).
    passthrough: bool
    maps: int = 0

    @property
    def alive(self) -> bool:
        # A mapping keeps the open file (and the daemon's handle) alive.
        return self.fd is not None or self.maps > 0


@dataclass(eq=False)
class Mapping:
    m: mmap.mmap
    handle: Handle
    offset: int
    length: int
    shared: bool


@dataclass
class Step:
    step: int = -1
    op: str = ""
    file: str = ""
    offset: int = -1
    length: int = -1
    detail: str = ""


def state_of(path: str) -> str:
    return os.getxattr(path, STATE_XATTR).decode()


def first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.mount = args.mount
        self.source = args.source
        # In the order the window passes over them.
        self.order: list[str] = [rel for rel, _ in json.loads(args.files)]
        self.files: dict[str, int] = dict(json.loads(args.files))
        self.window = min(args.window, len(self.order))
        self.seed = args.seed
        self.steps = args.steps
        self.passthrough = args.passthrough
        self.rng = random.Random(f"iomix/{args.seed}")
        self.trace = open(args.trace, "w", buffering=1) if args.trace else None
        self.src_fds = {rel: os.open(os.path.join(self.source, rel), os.O_RDONLY) for rel in self.files}
        self.handles: list[Handle] = []
        self.maps: list[Mapping] = []
        self.ids = 0
        self.ops: Counter[str] = Counter()
        self.open_states: Counter[str] = Counter()
        # Files this worker has seen complete: they must never go back.
        self.seen_complete: set[str] = set()
        self.cur = Step()
        self.bytes_checked = 0
        # Sequential reader: its own descriptor, a cursor, files still to read.
        self.sequential = args.sequential
        self.seq_todo = list(self.order)
        self.seq_fd: int | None = None
        self.seq_pos = 0
        self.seq_done: list[str] = []

    # -- helpers --

    def path(self, rel: str) -> str:
        return os.path.join(self.mount, rel)

    def note(self, op: str, file: str = "", offset: int = -1, length: int = -1, detail: str = "") -> None:
        self.cur = Step(self.cur.step, op, file, offset, length, detail)
        self.ops[op] += 1
        if self.trace:
            self.trace.write(json.dumps({"seed": self.seed, **self.cur.__dict__}) + "\n")

    def expect(self, rel: str, offset: int, got: bytes, asked: int) -> None:
        want = os.pread(self.src_fds[rel], asked, offset)
        if got != want:
            i = first_difference(got, want)
            raise Failure(
                f"wrong bytes: {rel} at offset {offset} (+{asked}): got {len(got)} bytes, "
                f"expected {len(want)}; first difference at file offset {offset + i}"
            )
        self.bytes_checked += len(got)

    def check_state(self, rel: str, handle: Handle | None = None) -> str:
        state = state_of(self.path(rel))
        m = STATE_RE.match(state)
        if not m:
            raise Failure(f"malformed state of {rel}: {state!r}")
        size = self.files[rel]
        if m.group(2) is not None:
            cached, total = int(m.group(2)), int(m.group(3))
            if total != size or not 0 <= cached <= size:
                raise Failure(f"state of {rel} (size {size}): {state!r}")
        if m.group(4) is not None:
            if not self.passthrough:
                raise Failure(f"state of {rel} is {state!r} although passthrough is off")
            if int(m.group(4)) < 1:
                raise Failure(f"state of {rel}: {state!r}: passthrough with no opens")
        done = state == "complete" or state.startswith("passthrough")
        if rel in self.seen_complete and not done:
            raise Failure(f"{rel} went back from complete to {state!r}")
        if done:
            self.seen_complete.add(rel)
        # While a handle of ours is alive its mode holds: passthrough stays
        # passthrough (the backing id must not go away), and a non-passthrough
        # handle excludes passthrough on the inode.
        for h in self.handles:
            if h.rel == rel and h.alive and h is not handle:
                if h.passthrough != state.startswith("passthrough"):
                    raise Failure(
                        f"state of {rel} is {state!r} while our handle #{h.hid} "
                        f"({'passthrough' if h.passthrough else 'not passthrough'}) is open"
                    )
        return state

    def pick_offset(self, size: int) -> int:
        r = self.rng.random()
        if r < 0.3:  # around a chunk edge
            off = self.rng.randrange(0, size // CHUNK + 1) * CHUNK + self.rng.randint(-5000, 5000)
        elif r < 0.4:  # around EOF, sometimes past it
            off = size - self.rng.randint(-200, 20000)
        else:
            off = self.rng.randrange(0, size)
        return max(0, min(off, size + 4096))

    def pick_length(self, limit: int = MAX_READ) -> int:
        return max(1, int(math.exp(self.rng.uniform(0, math.log(limit)))))

    # -- operations --

    def in_window(self) -> list[str]:
        """The files most steps go to now: a window sliding over `order`."""
        k = self.cur.step * (len(self.order) - self.window + 1) // self.steps
        k = max(0, min(k, len(self.order) - self.window))
        return self.order[k : k + self.window]

    def op_open(self) -> None:
        # Mostly files in the window (fresh ones come absent), sometimes any.
        pool = self.in_window() if self.rng.random() < 0.8 else self.order
        rel = self.rng.choice(pool)
        self.note("open", rel)
        fd = os.open(self.path(rel), os.O_RDONLY)
        self.ids += 1
        h = Handle(self.ids, rel, fd, passthrough=False)
        state = self.check_state(rel, handle=h)
        h.passthrough = state.startswith("passthrough")
        self.handles.append(h)
        self.open_states[state.split()[0]] += 1

    def op_pread(self) -> None:
        h = self.rng.choice([h for h in self.handles if h.fd is not None])
        size = self.files[h.rel]
        off, n = self.pick_offset(size), self.pick_length()
        self.note("pread", h.rel, off, n, f"handle #{h.hid}")
        got = os.pread(h.fd, n, off)
        self.expect(h.rel, off, got, n)

    def op_mmap(self) -> None:
        h = self.rng.choice([h for h in self.handles if h.fd is not None])
        size = self.files[h.rel]
        off = self.pick_offset(size) // PAGE * PAGE
        if off >= size:
            off = (size - 1) // PAGE * PAGE
        length = min(self.pick_length(MAX_MAP_LEN), size - off)
        shared = self.rng.random() < 0.5
        kind = "MAP_SHARED" if shared else "MAP_PRIVATE"
        self.note("mmap", h.rel, off, length, f"{kind} of handle #{h.hid}")
        m = mmap.mmap(h.fd, length, flags=mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE,
                      prot=mmap.PROT_READ, offset=off)
        mp = Mapping(m, h, off, length, shared)
        h.maps += 1
        self.maps.append(mp)
        self.read_mapping(mp)

    def read_mapping(self, mp: Mapping) -> None:
        a = self.rng.randrange(0, mp.length)
        n = min(self.pick_length(), mp.length - a)
        kind = "MAP_SHARED" if mp.shared else "MAP_PRIVATE"
        self.note("mapread", mp.handle.rel, mp.offset + a, n,
                  f"{kind} at {mp.offset} of handle #{mp.handle.hid}")
        self.expect(mp.handle.rel, mp.offset + a, mp.m[a : a + n], n)

    def op_mapread(self) -> None:
        self.read_mapping(self.rng.choice(self.maps))

    def op_munmap(self) -> None:
        mp = self.rng.choice(self.maps)
        self.note("munmap", mp.handle.rel, mp.offset, mp.length, f"handle #{mp.handle.hid}")
        mp.m.close()
        self.maps.remove(mp)
        mp.handle.maps -= 1
        self.forget_dead()

    def op_close(self) -> None:
        h = self.rng.choice([h for h in self.handles if h.fd is not None])
        self.note("close", h.rel, detail=f"handle #{h.hid}, {h.maps} mappings stay")
        fd, h.fd = h.fd, None
        os.close(fd)
        self.forget_dead()

    def op_state(self) -> None:
        rel = self.rng.choice(sorted(self.files))
        self.note("state", rel)
        self.check_state(rel)

    def op_seq(self) -> None:
        if self.seq_fd is None:
            rel = self.seq_todo[0]
            self.note("seq-open", rel)
            self.seq_fd = os.open(self.path(rel), os.O_RDONLY)
            self.seq_pos = 0
        rel = self.seq_todo[0]
        self.note("seq-read", rel, self.seq_pos, SEQ_PIECE)
        got = os.read(self.seq_fd, SEQ_PIECE)
        self.expect(rel, self.seq_pos, got, SEQ_PIECE)
        self.seq_pos += len(got)
        if not got:
            if self.seq_pos != self.files[rel]:
                raise Failure(f"sequential read of {rel} ended at {self.seq_pos}, size {self.files[rel]}")
            self.note("seq-close", rel)
            os.close(self.seq_fd)
            self.seq_fd = None
            self.seq_done.append(self.seq_todo.pop(0))

    def forget_dead(self) -> None:
        self.handles = [h for h in self.handles if h.alive]

    # -- the loop --

    def choose(self) -> str:
        with_fd = any(h.fd is not None for h in self.handles)
        weights = {
            "open": 3 if sum(h.fd is not None for h in self.handles) < MAX_FDS else 0,
            "pread": 6 if with_fd else 0,
            "mmap": 2 if with_fd and len(self.maps) < MAX_MAPS else 0,
            "mapread": 5 if self.maps else 0,
            "munmap": 2 if self.maps else 0,
            "close": 2 if with_fd else 0,
            "state": 1,
            # The sequential reader keeps to the window, completing files as it passes.
            "seq": 3 if self.sequential and self.seq_todo
            and self.order.index(self.seq_todo[0]) < self.order.index(self.in_window()[-1]) + 1 else 0,
        }
        ops = [op for op, w in weights.items() if w]
        return self.rng.choices(ops, [weights[op] for op in ops])[0]

    def run(self) -> dict:
        for step in range(self.steps):
            self.cur = Step(step)
            getattr(self, "op_" + self.choose())()
        self.cur = Step(self.steps)
        # Drain: finish the sequential files, then let go of everything.
        while self.sequential and self.seq_todo:
            self.op_seq()
        for mp in list(self.maps):
            self.note("munmap", mp.handle.rel, detail="final")
            mp.m.close()
        for h in self.handles:
            if h.fd is not None:
                self.note("close", h.rel, detail="final")
                os.close(h.fd)
        return {
            "ok": True,
            "seed": self.seed,
            "ops": dict(self.ops),
            "open_states": dict(self.open_states),
            "seq_done": self.seq_done,
            "bytes_checked": self.bytes_checked,
        }

    def failure(self, exc: BaseException) -> dict:
        return {
            "ok": False,
            "seed": self.seed,
            **self.cur.__dict__,
            "error": repr(exc),
            "traceback": traceback.format_exc(),
        }


def verify(args: argparse.Namespace) -> dict:
    """Open, read, map shared and private: every byte as in the source."""
    rel = args.file
    src = open(os.path.join(args.source, rel), "rb").read()
    want = hashlib.sha256(src).hexdigest()
    where = {"file": rel, "op": "open", "offset": 0}
    try:
        fd = os.open(os.path.join(args.mount, rel), os.O_RDONLY)
        try:
            state = state_of(os.path.join(args.mount, rel))
            where["op"] = "read"
            digest = hashlib.sha256()
            pos = 0
            while piece := os.pread(fd, MiB, pos):
                where["offset"] = pos
                if piece != src[pos : pos + len(piece)]:
                    raise Failure(f"read: wrong bytes in {rel} at {pos + first_difference(piece, src[pos:])}")
                digest.update(piece)
                pos += len(piece)
            if digest.hexdigest() != want:
                raise Failure(f"read: sha256 of {rel} differs ({pos} bytes read, size {len(src)})")
            for flags, kind in ((mmap.MAP_SHARED, "MAP_SHARED"), (mmap.MAP_PRIVATE, "MAP_PRIVATE")):
                where.update(op=kind, offset=0)
                with mmap.mmap(fd, len(src), flags=flags, prot=mmap.PROT_READ) as m:
                    if hashlib.sha256(m).hexdigest() != want:
                        raise Failure(f"{kind}: wrong bytes in {rel} at {first_difference(m[:], src)}")
            state_open = state_of(os.path.join(args.mount, rel))
        finally:
            os.close(fd)
    except (OSError, Failure) as exc:
        return {"ok": False, **where, "error": repr(exc), "traceback": traceback.format_exc()}
    return {"ok": True, "file": rel, "state_at_open": state, "state_before_close": state_open}


def main() -> int:
    faulthandler.enable()
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    mix = sub.add_parser("mix")
    mix.add_argument("--mount", required=True)
    mix.add_argument("--source", required=True)
    mix.add_argument("--files", required=True, help="JSON: [[relative path, size], ...] in window order")
    mix.add_argument("--window", type=int, default=3, help="files most steps go to at a time")
    mix.add_argument("--seed", type=int, required=True)
    mix.add_argument("--steps", type=int, required=True)
    mix.add_argument("--sequential", action="store_true")
    mix.add_argument("--passthrough", action="store_true", help="passthrough is on in the daemon")
    mix.add_argument("--trace")
    ver = sub.add_parser("verify")
    ver.add_argument("--mount", required=True)
    ver.add_argument("--source", required=True)
    ver.add_argument("--file", required=True)
    args = parser.parse_args()
    if args.cmd == "verify":
        result = verify(args)
    else:
        worker = Worker(args)
        try:
            result = worker.run()
        except (OSError, Failure) as exc:
            result = worker.failure(exc)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
