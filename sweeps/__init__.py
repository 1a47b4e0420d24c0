"""sweeps: Optuna studies over each method's knob. What a sweep is and will cost before it runs (`config`, `plan`,
`profile` with the files in `profiles/`), running it (`study`: the studies, matches and controls; `objective`: one
trial to one row; `rows`), shared storages (`storage`), the budgeted search (`search`, `budget`,
`search_report`), SLURM (`launch`) and the status of a running sweep (`status`). bench.LAYERS places
`sweeps.profile`, `sweeps.config` and `sweeps.plan` below bench.report and the rest above it.
"""
