"""The tracking benchmarks, one file per protocol, each holding its benchmarks' readers, rules
and packing for an evaluation server: got10k.py (GOT-10k's own toolkit), otb.py (the got10k
toolkit's ExperimentOTB: OTB100, UAV123, NfS, TrackingNet) and lasot.py (the LaSOT toolkit:
LaSOT, LaSOT-ext, TNL2K), over what they share in results.py (the Benchmark record, the runner
that tracks a benchmark's sequences into result files through the frame loop, the result
files, the report's common parts) and, for the last two, curves.py (success and precision
curves, their result layout and report).

  benchmark = benchmarks.BENCHMARKS["lasot"]
  sequences = benchmark.sequences(root, split)
"""

from benchmarks import got10k, lasot, otb

_ALL = {benchmark.name: benchmark for benchmark in (got10k.GOT10K, *lasot.BENCHMARKS, *otb.BENCHMARKS)}
BENCHMARKS = {name: _ALL[name] for name in ("got10k", "lasot", "lasot_ext", "trackingnet", "otb100", "uav123", "nfs",
                                            "tnl2k")}
