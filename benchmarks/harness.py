"""Timing, subprocess measurement and the environment report.

Timing rule (:func:`measure`)::

    warm-up calls (JIT compiles, caches, page faults)  ->  not timed
    inner = calls per sample, chosen so a sample lasts >= min_sample seconds
    sample k = (perf_counter after `inner` calls - before) / inner
    report median and min over `repeats` samples (seconds per call)

The median is the figure we quote (robust to a descheduled sample on a
shared machine); the min is the best case the hardware allowed.  Figures
that are compared with each other (minicnn, numpy, PyTorch on the same
work) are sampled in alternation by :func:`measure_interleaved`.
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

# Environment variables that change how many threads a process uses (or how
# its idle threads wait).  The thread study's children start from an
# environment without them (see :func:`clean_env`), so that "default" really
# means the default; the report lists those set for the main process.
THREAD_ENV_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                   "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT",
                   "NUMBA_THREADING_LAYER")


# ------------------------------------------------------------------ statistics
def median(values) -> float:
    """Median of a non-empty sequence (mean of the middle two for even length)."""
    v = sorted(float(x) for x in values)
    if not v:
        raise ValueError("median of an empty sequence")
    m = len(v) // 2
    return v[m] if len(v) % 2 else (v[m - 1] + v[m]) / 2


def ratio(a, b):
    """``a / b``, or None when either is missing or ``b`` is not positive."""
    if a is None or b is None or not b > 0 or not math.isfinite(a) or not math.isfinite(b):
        return None
    return a / b


@dataclass
class Stats:
    """Seconds per call: ``median`` and ``min`` over ``samples``; each sample
    averaged ``inner`` back-to-back calls."""
    median: float
    min: float
    samples: list = field(default_factory=list)
    inner: int = 1

    @classmethod
    def from_samples(cls, samples, inner=1):
        return cls(median(samples), min(samples), [float(s) for s in samples], int(inner))

    def to_dict(self):
        return asdict(self)


@dataclass
class Timing:
    """How :func:`measure` times: warm-up calls, samples, seconds per sample."""
    repeats: int = 5
    min_sample: float = 0.02
    warmup: int = 2
    max_inner: int = 100_000


def calls_per_sample(one_call: float, min_sample: float, max_inner: int = 100_000) -> int:
    """How many back-to-back calls make a sample of at least ``min_sample`` s."""
    if not one_call > 0:
        return max_inner
    return int(min(max_inner, max(1, math.ceil(min_sample / one_call))))


def measure(fn, timing: Timing = Timing(), clock=time.perf_counter) -> Stats:
    """Time ``fn()`` (no arguments); see the module docstring."""
    for _ in range(max(1, timing.warmup)):
        fn()
    t0 = clock()
    fn()
    inner = calls_per_sample(clock() - t0, timing.min_sample, timing.max_inner)
    samples = []
    for _ in range(max(1, timing.repeats)):
        t0 = clock()
        for _ in range(inner):
            fn()
        samples.append((clock() - t0) / inner)
    return Stats.from_samples(samples, inner)


def rotation(keys: list, r: int) -> list:
    """``keys`` rotated left by ``r``: the order of round ``r`` when several
    functions are timed in alternation, so none is always first."""
    r %= len(keys)
    return keys[r:] + keys[:r]


def measure_interleaved(fns: dict, timings: dict, clock=time.perf_counter) -> dict:
    """Time several functions in alternation: ``{name: fn}`` and ``{name:
    Timing}`` -> ``{name: Stats}``.

    Each function is warmed up and gets its calls per sample as in
    :func:`measure`; then the samples are taken in rounds, one sample of
    each function per round (the order rotating from round to round), so a
    slow spell of a shared machine falls on all of them alike and the
    ratios between them stay meaningful.  A function with fewer
    ``repeats`` than the others samples in rounds spread evenly over the
    whole span.
    """
    keys = list(fns)
    inner = {}
    for k in keys:
        t = timings[k]
        for _ in range(max(1, t.warmup)):
            fns[k]()
        t0 = clock()
        fns[k]()
        inner[k] = calls_per_sample(clock() - t0, t.min_sample, t.max_inner)
    want = {k: max(1, timings[k].repeats) for k in keys}
    rounds = max(want.values())
    samples = {k: [] for k in keys}
    for r in range(rounds):
        for k in rotation(keys, r):
            if (r + 1) * want[k] // rounds > r * want[k] // rounds:     # want[k] of the rounds, evenly
                fn, n = fns[k], inner[k]
                t0 = clock()
                for _ in range(n):
                    fn()
                samples[k].append((clock() - t0) / n)
    return {k: Stats.from_samples(samples[k], inner[k]) for k in keys}


def measure_phases(calls: dict, timing: Timing, np_timing: Timing, before=None) -> list:
    """Time the phases of one case: ``calls`` maps a column name to its
    functions, one per phase (e.g. forward, backward, forward+backward) ->
    one ``{name: Stats}`` per phase, each from :func:`measure_interleaved`
    (column ``"numpy"`` timed with ``np_timing``, the others with
    ``timing``).  ``before()``, if given, runs before each phase (e.g. a
    forward pass, which a backward phase needs)."""
    timings = {k: np_timing if k == "numpy" else timing for k in calls}
    out = []
    for k in range(len(next(iter(calls.values())))):
        if before is not None:
            before()
        out.append(measure_interleaved({name: fns[k] for name, fns in calls.items()}, timings))
    return out


# -------------------------------------------------------- memory-copy roof
class CopyRoof:
    """Time ``np.copyto`` of a float32 buffer of a given byte count: the
    bandwidth roof a kernel reading its input and writing its output cannot
    beat by much.  Results are cached per byte count (one run, one figure)."""

    def __init__(self, timing: Timing):
        self.timing = timing
        self._cache: dict[int, Stats] = {}

    def __call__(self, nbytes: int) -> Stats:
        import numpy as np

        nbytes = int(nbytes)
        if nbytes not in self._cache:
            n = max(1, nbytes // 4)
            src = np.random.default_rng(0).standard_normal(n).astype(np.float32)
            dst = np.empty_like(src)
            self._cache[nbytes] = measure(lambda: np.copyto(dst, src), self.timing)
        return self._cache[nbytes]


# ------------------------------------------------------------- subprocesses
def clean_env(extra: dict | None = None, drop=THREAD_ENV_VARS) -> dict:
    """``os.environ`` without the thread-count variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    # make `benchmarks` importable from a child started anywhere
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


@dataclass
class ChildResult:
    """A finished subprocess: exit code, wall seconds, peak RSS in bytes (0
    when not measured)."""
    returncode: int
    wall: float
    max_rss: int
    stdout: str
    stderr: str

    def json(self):
        """The last stdout line that parses as a JSON object (children print
        their measurements that way), or None."""
        for line in reversed(self.stdout.strip().splitlines()):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
        return None


# Peak RSS needs a small launcher between us and the measured command: on
# exec, Linux keeps the *old* address space's high-water RSS in the child's
# ru_maxrss, and the old address space is a (v)fork of this process -- so a
# child spawned straight from a 900 MB benchmark process reports >= 900 MB
# whatever it does.  The launcher is a bare Python (~10 MB) that spawns the
# command, waits for it with os.wait4 and writes its rusage and wall time.
_LAUNCHER = r"""
import json, os, subprocess, sys, time
cmd, out = json.loads(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
p = subprocess.Popen(cmd)
_, status, ru = os.wait4(p.pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    json.dump({"status": status, "maxrss": ru.ru_maxrss, "wall": wall}, f)
"""


def run_child(cmd, env=None, timeout=600.0, cwd=None, rss=False) -> ChildResult:
    """Run ``cmd``; exit code, wall time from spawn to exit, output.

    ``rss=True``: also the command's own peak RSS, through the launcher above
    (``ru_maxrss`` from ``os.wait4``, the per-child form of
    ``getrusage(RUSAGE_CHILDREN)``; kilobytes on Linux, bytes on macOS); the
    wall time is then measured by the launcher around the command alone.
    Without it ``max_rss`` is 0.  Output goes to temporary files so a chatty
    child can never block on a full pipe.  On timeout the child (and with
    ``rss``, the launcher's process group) is killed.
    """
    scale = 1 if sys.platform == "darwin" else 1024
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "rusage.json")
        argv = [sys.executable, "-c", _LAUNCHER, json.dumps(list(cmd)), report] if rss else list(cmd)
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=rss)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if rss:
                os.killpg(proc.pid, 9)
            else:
                proc.kill()
            proc.wait()
        wall = time.perf_counter() - t0
        code, max_rss = proc.returncode, 0
        if rss:
            try:
                with open(report) as f:
                    info = json.load(f)
                code = os.waitstatus_to_exitcode(info["status"])
                max_rss, wall = int(info["maxrss"]) * scale, float(info["wall"])
            except (OSError, ValueError, KeyError):
                code = code if code else -1
        out.seek(0)
        err.seek(0)
        return ChildResult(code, wall, max_rss, out.read(), err.read())


class Burners:
    """``with Burners(k):`` runs ``k`` busy-loop processes (CPU contention),
    ended by their pids on exit."""

    def __init__(self, k: int):
        self.k = int(k)
        self.procs = []

    def __enter__(self):
        for _ in range(self.k):
            self.procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                               stdin=subprocess.DEVNULL))
        time.sleep(0.3 if self.k else 0)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux/macOS
        return None


# -------------------------------------------------------------- the machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))
    except OSError:
        pass
    return []


def blas_info() -> dict:
    """numpy's BLAS as built (name, version, configuration) and, for OpenBLAS,
    the thread count it uses right now (read through ctypes)."""
    import numpy as np

    info = {}
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info = {k: cfg.get(k) for k in ("name", "version", "openblas configuration") if cfg.get(k)}
    except Exception as e:  # older numpy: no mode="dicts"
        info["error"] = f"{type(e).__name__}: {e}"
    lib = _openblas_lib()
    if lib is not None:
        info["library"] = lib[1]
        for sym in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                    "openblas_get_num_threads"):
            fn = getattr(lib[0], sym, None)
            if fn is not None:
                fn.restype = ctypes.c_int
                info["threads"] = int(fn())
                break
        for sym in ("scipy_openblas_get_config64_", "openblas_get_config64_", "openblas_get_config"):
            fn = getattr(lib[0], sym, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                info["runtime config"] = fn().decode(errors="replace").strip()
                break
    return info


def _openblas_lib():
    """(CDLL, path) of the OpenBLAS numpy loaded, found in /proc/self/maps."""
    import numpy  # noqa: F401  (makes sure the library is loaded)

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            return ctypes.CDLL(path), path
        except OSError:
            continue
    return None


def kernel_options() -> list[dict]:
    """Every compiled dispatcher in minicnn.kernels with its options:
    cache (a real cache, not numba's NullCache), parallel, fastmath."""
    import importlib
    import pkgutil

    import minicnn.kernels as kernels
    from numba.core.dispatcher import Dispatcher

    rows = []
    for mod_info in sorted(pkgutil.iter_modules(kernels.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"minicnn.kernels.{mod_info.name}")
        for name, obj in sorted(vars(mod).items()):
            if isinstance(obj, Dispatcher) and obj.py_func.__module__ == mod.__name__:
                opts = obj.targetoptions
                rows.append({"module": mod_info.name, "name": name,
                             "cache": type(obj._cache).__name__ != "NullCache",
                             "parallel": bool(opts.get("parallel", False)),
                             "fastmath": bool(opts.get("fastmath", False))})
    return rows


def environment(torch_mod=None) -> dict:
    """What the figures depend on: machine, versions, threads, BLAS, load."""
    import numba
    import numpy as np

    import minicnn

    start_numba_pool()   # numba.threading_layer() is only defined once a parallel kernel ran
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpus_online": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg": loadavg(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "minicnn": minicnn.__version__,
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": numba.threading_layer(),
        "openmp_runtimes": openmp_runtimes(),
        "blas": blas_info(),
        "thread_env": {k: os.environ[k] for k in THREAD_ENV_VARS if k in os.environ},
        "commit": git_commit(os.path.dirname(os.path.dirname(os.path.abspath(minicnn.__file__)))),
    }
    if torch_mod is not None:
        env["torch"] = torch_mod.__version__
        env["torch_threads"] = torch_mod.get_num_threads()
        env["torch_interop_threads"] = torch_mod.get_num_interop_threads()
    else:
        env["torch"] = None
    return env


def git_commit(root: str) -> str | None:
    """The short hash of the commit checked out at ``root``, with
    ``+changes`` when tracked files differ from it; None outside a git
    checkout or without git (a report must not claim a commit it cannot
    name)."""
    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if changed else "")


def start_numba_pool() -> None:
    """Run one tiny parallel kernel, so Numba's OpenMP pool (and the system
    libgomp) is loaded.  Call it before ``import torch``: PyTorch ships its
    own libgomp.so.1, and if torch loads first, Numba's layer loads the
    system copy beside it -- two OpenMP runtimes, two spinning pools in one
    process.  In this order torch reuses the loaded runtime (one pool)."""
    import numpy as np

    from minicnn.kernels import pooling as K

    K.maxpool2d_backward(np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 2), np.int64),
                         np.zeros((2, 4, 4), np.float32))


def openmp_runtimes() -> list[str]:
    """The OpenMP runtime libraries loaded in this process (/proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            return sorted({line.split()[-1] for line in f
                           if "/" in line and any(k in line for k in ("libgomp", "libiomp", "libomp"))})
    except OSError:
        return []


def load_torch(threads: int, enabled: bool = True):
    """``torch`` with ``set_num_threads(threads)``, or None when it is not
    installed (it is an optional reference, never a dependency)."""
    if not enabled:
        return None
    try:
        import torch
    except Exception:
        return None
    torch.set_num_threads(int(threads))
    return torch


# ------------------------------------------------------------------- output
def atomic_write(path: str, text: str, replace: bool = True) -> bool:
    """Write ``text`` (UTF-8) to ``path`` atomically, with minicnn's own
    temporary-file writer: a reader never sees half a file.  With
    ``replace=False`` an existing file is left alone and False returned
    (:func:`minicnn.checkpoint.atomic_write_bytes`)."""
    from minicnn.checkpoint import atomic_write_bytes

    return atomic_write_bytes(path, text.encode("utf-8"), replace=replace)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
