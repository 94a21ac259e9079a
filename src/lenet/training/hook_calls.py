"""Callback hooks that no callback defines are not called: Lightning calls each of its ~30 hooks on every callback,
in a profiler context, the no-ops a callback inherits from `Callback` too. With lenet's callbacks that is ~45 calls a
training step, of which 3 do anything (the checkpoints' on_train_batch_end, the learning-rate monitor's
on_train_batch_start): a few percent of a LeNet step at batch 64 on a CPU. Skipping a hook that no callback of the
trainer overrides gives the same run; only a profiler's report (debug=profile) no longer lists those no-op calls.
"""

from lightning.pytorch import Callback
from lightning.pytorch.trainer import call

_call_every_callback = call._call_callback_hooks


def _call_defined_hooks(trainer, hook_name: str, *args, monitoring_callbacks=None, **kwargs) -> None:
    inherited = getattr(Callback, hook_name, None)
    if inherited is not None and not any(_defines(callback, hook_name, inherited) for callback in trainer.callbacks):
        return
    _call_every_callback(trainer, hook_name, *args, monitoring_callbacks=monitoring_callbacks, **kwargs)


def _defines(callback: Callback, hook_name: str, inherited) -> bool:
    """Whether the callback's hook is its own: its class's, or set on the instance (as LambdaCallback does)."""
    hook = getattr(callback, hook_name, None)
    return getattr(hook, "__func__", hook) is not inherited


def skip_undefined_hooks() -> None:
    """From now on, in this process (Lightning's loops look the function up in its module at each call)."""
    call._call_callback_hooks = _call_defined_hooks
