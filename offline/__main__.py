"""python -m offline <command> [options]; `python -m offline <command> --help` for each."""
import importlib
import os
import sys

# TensorFlow's C++ start-up chatter buries the progress bars (workers inherit this too).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

COMMANDS = {
    "profile": ("offline.profile", "time training steps and eval passes per backbone and "
                                   "shape: the cost table"),
    "bohb": ("offline.bohb", "BOHB per (known dataset, backbone) on SMAC3 + Dask"),
    "crosseval": ("offline.crosseval", "evaluate the incumbents (or a portfolio) on every known "
                                       "dataset or derived task"),
    "portfolio": ("offline.portfolio", "the configs every meta-dataset task runs: greedy "
                                       "incumbents and diversified ones"),
    "selector": ("offline.selector", "fingerprint the known datasets, train and compare the "
                                     "meta-classifiers"),
    "zeroshot": ("offline.zeroshot", "the zero-shot selector on the portfolio's matrix: "
                                     "leave-one-source-out report, metadata/zeroshot.json"),
    "export": ("offline.export", "write metadata/ from the store and the selector"),
    "report": ("offline.report", "plots and a markdown summary in reports/"),
    "techniques": ("offline.techniques", "low-data techniques against plain cross-entropy"),
    "fewshot": ("offline.fewshot.command", "REPTILE and MetaNAS on few-shot tasks (Table 1)"),
    "tasks": ("offline.tasks", "derived tasks (fewer classes, examples, pixels, frames) for the "
                               "meta-dataset"),
    "bench": ("offline.bench", "benchmark the submission through the local harness"),
    "reading": ("offline.reading", "what reading a training set costs, and its class coverage"),
    "anytime": ("offline.anytime", "check that a long run's prefix scores as a shorter run"),
    "package": ("offline.package", "build the submission zip (make zip)"),
    "weights": ("offline.weights", "copy and check the pretrained weights (make pretrained)"),
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:10s} {summary}")
        return 0 if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help") else 2
    module, _ = COMMANDS[sys.argv[1]]
    return importlib.import_module(module).main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
