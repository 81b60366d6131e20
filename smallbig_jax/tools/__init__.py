"""The tools that time and check what training builds, never the training loop itself: the benchmark
(`benchmark.py`), the first check on a new accelerator (`accelerator_check.py`), and what they share (`harness.py`:
the timing harness, the row of a timed step, MFU against the device's peak, the machine record and the report
writer)."""
