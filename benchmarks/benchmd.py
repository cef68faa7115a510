"""BENCHMARKS.md's sections, the machine they were measured on, and how busy it was.

Every benchmark script rewrites only its own "## " section (`write_section`) and saves
its raw results as JSON under benchmarks/results/ (git-ignored, `save_results`), with the
1-minute load average during the measurement; `bench_train.py --header` then writes the
header from those files: date, CPU model and ISA flags, versions, and a warning when the
machine was busy (load > 1.0 on 2 cores) while a figure was taken.
"""

import json
import os
import platform
import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
RESULTS = Path(__file__).resolve().parent / "results"
#: The 1-minute load average above which a figure is flagged as taken on a busy machine:
#: a benchmark's own threads keep the load near the core count (2 on this machine while it
#: measures), so only load beyond that is other work.
BUSY_LOAD = (os.cpu_count() or 1) + 0.5


def replace_section(text, heading, body):
    """`text` with the section `heading` (up to the next "## ") replaced by `body`, or
    `body` appended as that section."""
    block = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: block + "\n", text, count=1).rstrip() + "\n"
    return text.rstrip() + "\n\n" + block


def replace_header(text, body):
    """The block between the '# Benchmarks' title and the first '## ' section."""
    if not text.startswith("# Benchmarks"):
        text = "# Benchmarks\n\n" + text
    m = re.search(r"^## ", text, re.M)
    rest = text[m.start() :] if m else ""
    return f"# Benchmarks\n\n{body.strip()}\n\n{rest}".rstrip() + "\n"


def write_section(heading, body, path=BENCHMARKS_MD):
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    path.write_text(replace_section(text, heading, body))


def save_results(name, results):
    """benchmarks/results/NAME.json (the raw figures a section was written from)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return path


def load_results(name):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


# --- the machine ------------------------------------------------------------------------


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line():
    """CPU model, cores and the ISA flags that decide oneDNN's kernels."""
    import trainstep

    _, cores, _, _ = trainstep.cpu_details()
    flags = ", ".join(trainstep.isa_flags()) or "no AVX"
    return f"{cpu_model()}, {cores} cores ({flags})"


def load1():
    """The 1-minute load average (None where /proc/loadavg is missing)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_idle(seconds=2.0):
    """The share of CPU time that was idle over the next `seconds`."""

    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)

    a = snap()
    time.sleep(seconds)
    b = snap()
    return (b[0] - a[0]) / max(1, b[1] - a[1])


def wait_quiet(limit):
    """Wait until the CPU is >= 90% idle (other people's work), at most `limit` seconds;
    returns the idle share last seen."""
    deadline = time.time() + limit
    idle = cpu_idle()
    while idle < 0.9 and time.time() < deadline:
        idle = cpu_idle(5)
    return idle


def today():
    return time.strftime("%Y-%m-%d")
