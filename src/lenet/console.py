"""What users see on the console: one line for their mistakes, none of Lightning's noise."""

import functools
import logging
import os
import warnings


class UserError(Exception):
    """A problem the user can fix (a bad value, missing files): reported as one line, no traceback."""


def report_user_errors(task):
    """Wrap a Hydra task so a UserError ends the process with one line and exit status 1.

    HYDRA_FULL_ERROR=1 shows the full traceback instead, as it does for Hydra's own errors.
    """

    @functools.wraps(task)
    def wrapper(cfg):
        quiet_lightning()
        try:
            return task(cfg)
        except UserError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise SystemExit(f"error: {error}") from None

    return wrapper


def quiet_lightning() -> None:
    """Drop Lightning's advertising and a deprecation warning Lightning raises against itself."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not record.getMessage().startswith("💡 Tip")
    )
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
