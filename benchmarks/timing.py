"""Timing helper shared by the benchmarks."""
import statistics
import time


def median_seconds(fn, reps, sync=lambda: None):
    """Median wall seconds of ``fn()`` over ``reps`` runs after one warm-up run;
    ``sync`` (e.g. ``torch.cuda.synchronize``) is called around every run."""
    fn()
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
