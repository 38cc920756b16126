"""smart_utils/stop_on_signal.py: Ctrl-C and SIGTERM during training ask for a checkpoint and a stop after the
current step; once training is over (the callback uninstalled), Ctrl-C interrupts again.

The signals are sent to this process. A run stopped this way and resumed is test_smart_resume.py's; both ranks of a
two-process run stopping after the same step is test_smart_processes.py's.
"""

import os
import signal
import time

import pytest

from conftest import ROOT


def test_ctrl_c_and_sigterm_ask_for_a_checkpoint_and_a_stop_after_the_current_step():
    from transformers import TrainerControl

    from smart_utils.stop_on_signal import StopOnSignal

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in handlers:
            callback = StopOnSignal()
            control = callback.on_step_end(None, None, TrainerControl())
            assert not (control.should_save or control.should_training_stop)
            os.kill(os.getpid(), sig)  # handled (no KeyboardInterrupt), the step goes on
            control = callback.on_step_end(None, None, TrainerControl())
            assert control.should_save and control.should_training_stop
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@pytest.fixture
def python_signal_handlers():
    """Python's own handlers (Ctrl-C raises KeyboardInterrupt), and whatever was there put back after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_after_training_ctrl_c_interrupts_instead_of_asking_for_a_checkpoint(python_signal_handlers):
    from transformers import TrainerControl

    from smart_utils.stop_on_signal import StopOnSignal

    sigterm = signal.getsignal(signal.SIGTERM)
    callback = StopOnSignal()  # as smart.py installs it, for the whole training
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)  # (the handler runs here: no KeyboardInterrupt, a request)
    assert callback.on_step_end(None, None, TrainerControl()).should_training_stop
    callback.uninstall()  # what smart.py does once the tuned model is saved
    assert signal.getsignal(signal.SIGTERM) == sigterm
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    source = (ROOT / "smart.py").read_text()  # smart.py uninstalls it after saving, before the report
    assert source.index("trainer.save_state()") < source.index("stop_on_signal.uninstall()") < source.index(
        "evaluate_run(run_dir")
