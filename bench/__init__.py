"""decore-bench engine: CLI, data, training, measurement, baselines."""
import warnings

# fvcore's import path triggers torch's jit-script deprecation notice; it is not ours to fix
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
