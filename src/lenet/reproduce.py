"""Rerun a finished run and say whether its metrics came out identical: `python -m lenet.reproduce RUN_DIR`.
Exit status 0 identical, 1 different, 2 nothing compared. The work is lenet.runs.replay."""

from lenet.runs.replay import main

if __name__ == "__main__":
    main()
