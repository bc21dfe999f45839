"""Run a command and measure it as a whole: wall seconds and the peak memory of its process tree
(the command and every process it starts), sampled every 50 ms with psutil.

Two sums are reported: RSS counts a page shared by several processes (the code of numpy, a
memory-mapped file) once per process, so it overstates a tree of workers; PSS splits each shared
page between the processes sharing it, so it adds up to what the tree really holds (Linux only;
elsewhere it equals RSS)."""

from __future__ import annotations

import subprocess
import threading
import time

from decoderlm.errors import DecoderLMError

INTERVAL = 0.05


def run_measured(command: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """{"seconds", "peak_rss_mb", "peak_pss_mb", "output"} of running `command` to completion."""
    try:
        import psutil
    except ImportError:
        raise DecoderLMError("the data benchmark measures memory with psutil: pip install 'decoderlm[bench]'") from None
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = {"rss": 0, "pss": 0}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(psutil, process.pid, peaks, stop), daemon=True)
    sampler.start()
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        stop.set()
        sampler.join()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise DecoderLMError(f"{' '.join(command[:4])} ... failed: {output.strip().splitlines()[-1:] or output}")
    return {"seconds": seconds, "peak_rss_mb": peaks["rss"] / 1e6, "peak_pss_mb": peaks["pss"] / 1e6, "output": output}


def _sample(psutil, pid: int, peaks: dict, stop: threading.Event) -> None:
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        rss = pss = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for process in tree:
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        peaks["rss"], peaks["pss"] = max(peaks["rss"], rss), max(peaks["pss"], pss)
        stop.wait(INTERVAL)
