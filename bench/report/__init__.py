"""bench.report: everything drawn from stored results, no training. What the outputs say about rows (`rows`:
labels, seed means, the protocol sentence), the paper-style tables (`tables`), an experiment's figures and README
(`experiment`), the paper figure (`figures`) in the project's one look (`style`), paired statistics (`stats`),
DECORE's paper tables beside the published rows (`paper`) and the results site (`site`).

May import: bench.core, bench.engine, bench.deploy, bench.trial, sweeps.profile, sweeps.config, sweeps.plan, methods, models.
"""
