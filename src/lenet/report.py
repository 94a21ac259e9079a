"""Compare runs: `python -m lenet.report outputs/multirun/<date>/<time>` (a sweep dir, run dirs, or a folder above
them). Writes report.csv, report_by_config.csv, report.md and report.png, each difference with its 95% interval.
The work is lenet.runs.sweep_report."""

from lenet.runs.sweep_report import main

if __name__ == "__main__":
    main()
