"""bench.trial: one method on one baseline, and its record. The trial pipeline and the equal budget (`run`),
the scratch controls (`scratch`), the results table every trial and sweep writes (`results`) and the quiet
latency pass over stored rows (`retime`).

May import: bench.core, bench.engine, bench.deploy, methods, models.
"""
