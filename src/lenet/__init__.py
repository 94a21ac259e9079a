"""LeNet on MNIST-family data with PyTorch Lightning and Hydra."""


class UserError(Exception):
    """A problem the user can fix (a bad value, missing files): reported as one line, no traceback."""


def report_user_errors(task):
    """Wrap a Hydra task so a UserError ends the process with one line and exit status 1.

    HYDRA_FULL_ERROR=1 shows the full traceback instead, as it does for Hydra's own errors.
    """
    import functools
    import os

    @functools.wraps(task)
    def wrapper(cfg):
        try:
            return task(cfg)
        except UserError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise SystemExit(f"error: {error}") from None

    return wrapper
