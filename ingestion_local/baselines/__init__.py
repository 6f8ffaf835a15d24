"""Reference models for trying the harness: `all_zero`, `linear`, and the platform's bad
submissions (`bad_prediction_shape`, `exception_in_model`, `exceeds_time_limit`,
`no_train_or_test`). Each folder is a code_dir holding a model.py."""
from pathlib import Path

BASELINES_DIR = Path(__file__).resolve().parent
NAMES = ("all_zero", "linear", "bad_prediction_shape", "exception_in_model",
         "exceeds_time_limit", "no_train_or_test")


def code_dir(name: str) -> Path:
    """The code_dir of baseline `name`."""
    if name not in NAMES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(NAMES)}")
    return BASELINES_DIR / name
