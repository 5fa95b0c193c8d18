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


def interleaved_seconds(fns, iters, warmup):
    """Wall seconds of every timed run of each function in ``fns``, the functions taking
    turns within each iteration so that drift in the machine's speed hits all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(iters):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return times
