"""bench.engine: from data to a trained baseline. Data sets and the device-resident loader (`data`), the selection
splits (`splits`), image folders (`imagefolder`), recipes (`recipe`, the files in `recipes/`), the training loop
(`train`), torchrun (`dist`), FLOPs, params and latency (`measure`), the cached baseline (`baseline`) and Weights &
Biases (`tracking`).

May import: bench.core, methods, models.
"""
