"""bench.core: what every other package stands on. Errors (`UserError`), atomic writes and hashing (`io`, with
`results_dir`), the environment a result was made in (`env`), crash points for the fault tests (`faults`) and the
engine's version, a content hash of the code that can change a trial's numbers (`version`).

May import: nothing of bench (the standard library, torch, numpy).
"""
