"""Preemption: a signal asks the run to checkpoint and stop; the exit code asks the scheduler to requeue it.

Clusters warn before they kill: SLURM sends SIGTERM at preemption or at the time limit (then SIGKILL after
``KillWait``, 30 s by default), and ``#SBATCH --signal=USR1@300`` sends SIGUSR1 five minutes before the
limit. The trainers (``train.py``, ``train_vae.py``) install :class:`PreemptionHandler` for the signals of
``CkptConfig.signals``. The first signal only sets a flag. At the end of the current optimizer step every
rank asks all the others (``dist.any_rank``: a rank the signal has not reached yet stops at the same step),
writes a checkpoint (unless that step was just saved), and the trainer raises :class:`Preempted`; the
recipe's ``main`` exits with ``EXIT_PREEMPTED`` (75, ``EX_TEMPFAIL`` of sysexits.h: a temporary failure,
retry). A second signal exits at once with ``128 + signum``, as a shell reports a killed process.

Requeue with ``--resume auto``: the run continues bit-exactly from the preemption checkpoint.

Under ``torchrun`` the agent forwards SIGTERM (and, with ``TORCHELASTIC_SIGNALS_TO_HANDLE`` naming it,
SIGUSR1) to the workers and kills them 30 s later; the workers exit with 75 but torchrun itself reports 1
for any failed worker. Launch with ``srun python …`` (``dist.init`` reads SLURM's variables) to get 75 from
the job step, or requeue on the checkpoint: see the README's Reliability section.
"""

from __future__ import annotations

import os
import signal
import threading

from minivdit import dist

EXIT_PREEMPTED = 75
"""The exit code of a run that stopped at a signal after writing its checkpoint (``EX_TEMPFAIL``)."""

UNCATCHABLE = ("SIGKILL", "SIGSTOP")


class Preempted(Exception):  # noqa: N818 (not an error: the run did what it was asked)
    """Raised by a trainer once the preemption checkpoint is written; ``main`` turns it into exit code 75."""

    def __init__(self, signal_name: str, step: int, checkpoint):
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint {checkpoint}")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


def check_signal_names(names: tuple[str, ...], field: str) -> None:
    """``ValueError`` naming ``field`` unless every name is a catchable signal of this platform."""
    for name in names:
        if not isinstance(name, str) or not hasattr(signal, name) or not name.startswith("SIG"):
            raise ValueError(f"{field}: {name!r} is not a signal name (e.g. 'SIGTERM', 'SIGUSR1')")
        if name in UNCATCHABLE or "_" in name:
            raise ValueError(f"{field}: {name} cannot be caught; use e.g. SIGTERM or SIGUSR1")


class PreemptionHandler:
    """Context manager: while active, the first of ``signals`` sets ``signal_name``; a second one exits at
    once. The previous handlers are restored on exit. Outside the main thread (where Python cannot install
    handlers) it does nothing."""

    def __init__(self, signals: tuple[str, ...]):
        check_signal_names(signals, "signals")
        self.signals = tuple(getattr(signal, n) for n in signals)
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionHandler:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:  # the second signal: no more waiting
            os.write(2, f"\n{name} again: exiting now without a checkpoint\n".encode())
            os._exit(128 + signum)
        self.signal_name = name
        # No logging here: a handler runs between two bytecodes, possibly inside the logging lock.
        os.write(2, f"\n{name}: finishing this step, then checkpoint and exit ({EXIT_PREEMPTED})\n".encode())

    def requested(self) -> bool:
        """Whether any rank got a signal (collective: every rank calls it once per step)."""
        return dist.any_rank(self.signal_name is not None)

    def stopped(self, step: int, checkpoint) -> Preempted:
        """The exception a trainer raises once the checkpoint of ``step`` is written."""
        return Preempted(self.signal_name or "a signal (to another rank)", step, checkpoint)


__all__ = ["EXIT_PREEMPTED", "Preempted", "PreemptionHandler", "check_signal_names"]
