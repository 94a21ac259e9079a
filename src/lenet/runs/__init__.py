"""What runs leave behind, and what is done with it: run dirs and what an earlier attempt left in them, sweeps and
their continuation, reports that compare runs with confidence intervals, reruns that check a run reproduces."""
