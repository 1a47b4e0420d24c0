"""bench.report: everything drawn from stored results, no training. An experiment's tables, fronts and README
(`experiment`), its figures (`figures`), paired statistics (`stats`), DECORE's paper tables beside the published
rows (`paper`) and the results site (`site`).

May import: bench.core, bench.engine, bench.deploy, bench.trial, sweeps.profile, sweeps.config, sweeps.plan, methods, models.
"""
