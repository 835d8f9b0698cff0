#!/usr/bin/env python3
"""Read an HdrHistogram interval log with HdrHistogram_py (the `hdrhistogram` package on PyPI,
the HdrHistogram project's Python port) and print one JSON object per interval: its absolute
start time, length, total count, max and p50/p99 (in the log's value unit), then a summary line.

Used by tests/histogram_interval_log.rs to check that simgate's `/histograms/{name}/log` is a
log the project's own reader decodes. Usage: read_interval_log.py LOG_FILE
"""
import json
import sys

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader


def main() -> None:
    path = sys.argv[1]
    # The bounds simgate records with: 1 us .. 60 s, 3 significant digits.
    reference = HdrHistogram(1, 60_000_000, 3)
    reader = HistogramLogReader(path, reference)
    total = 0
    intervals = 0
    while True:
        h = reader.get_next_interval_histogram()
        if h is None:
            break
        intervals += 1
        count = h.get_total_count()
        total += count
        print(json.dumps({
            "start": h.get_start_time_stamp(),
            "end": h.get_end_time_stamp(),
            "count": count,
            "max": h.get_max_value() if count else 0,
            "p50": h.get_value_at_percentile(50) if count else 0,
            "p99": h.get_value_at_percentile(99) if count else 0,
        }))
    reader.close()
    print(json.dumps({"intervals": intervals, "total": total,
                      "start_time_sec": reader.get_start_time_sec()}))


if __name__ == "__main__":
    main()
