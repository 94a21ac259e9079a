"""How often lenet.report calls a difference resolved when there is none: A/A comparisons on real runs.

Give it runs of ONE configuration over many seeds (`python -m lenet.train -m seed='range(1,21)' ...`). It draws two
disjoint sets of k seeds many times, compares them as lenet.report compares two configurations that ran different
seeds (unpaired), and counts the comparisons whose 95% interval excludes 0: false alarms, about 5% if the intervals
are right. Also gives the seed-to-seed spread of each metric.

    python benchmarks/false_alarms.py outputs/multirun/<date>/<time> [--seeds 3 5] [--draws 2000]
"""

import argparse
import random
import statistics
from pathlib import Path

from lenet.runs.comparison import difference
from lenet.runs.jobs import read_runs
from lenet.runs.sweep_report import POINTS

METRICS = ("val/acc_best", "test/acc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a sweep over seeds of one configuration")
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 5], help="seeds on each side of a comparison")
    parser.add_argument("--draws", type=int, default=2000)
    args = parser.parse_args()
    _, jobs = read_runs([args.folder])
    done = [job for job in jobs if job.metrics]
    print(f"{len(done)} finished runs of one configuration in {args.folder}")
    rng = random.Random(0)
    for name in METRICS:
        values = [job.metrics[name] for job in done]
        spread = statistics.stdev(values) * POINTS
        print(f"{name}: mean {statistics.fmean(values):.4f}, seed-to-seed std {spread:.2f} points")
        for k in args.seeds:
            if 2 * k > len(values):
                continue
            alarms = 0
            for _ in range(args.draws):
                drawn = rng.sample(values, 2 * k)
                found = difference(dict(enumerate(drawn[:k])), {f"b{i}": v for i, v in enumerate(drawn[k:])})
                alarms += found.resolved
            print(
                f"  {k} vs {k} seeds: {alarms / args.draws:.1%} of {args.draws} A/A comparisons resolved (false alarms)"
            )


if __name__ == "__main__":
    main()
