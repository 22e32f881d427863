"""Training progress on stderr: a tqdm bar on a terminal, plain lines in logs.

A carriage-return bar written to a file (CI, ``nohup``, cluster jobs) is hundreds of kilobytes of
redraws; there a line every ``log_every`` steps says the same. Both show the training batch's
bits/dim, the unit named, e.g. ``train emerging: step 400/1000, 3.804 bits/dim (21.3 steps/s)``.
"""

import sys
import time

# Plain progress lines per run when stderr is not a terminal (about).
LINES_PER_RUN = 20


class Progress:
    """Progress of the training steps ``initial .. total``.

    Args:
      total: last step
      initial: first step (when resuming)
      description: prefix of the bar or lines, e.g. ``"train emerging"``
      enabled: show progress at all (messages of :meth:`write` are always shown)
      stream: where to write (None: ``sys.stderr``, looked up now)
      log_every: steps between plain lines (None: about ``LINES_PER_RUN`` lines per run)
    """

    def __init__(
        self, total, initial=0, description="train", enabled=True, stream=None, log_every=None
    ):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.description = total, description
        self.enabled = enabled
        self.log_every = log_every or max(1, total // LINES_PER_RUN)
        self.bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm.auto import tqdm  # the train extra's; imported when a bar is shown

            self.bar = tqdm(
                total=total, initial=initial, desc=description, dynamic_ncols=True, file=self.stream
            )
        self._start, self._start_step = time.perf_counter(), initial

    def update(self, step, bits_per_dim=None):
        """Step ``step`` is done, with the bits/dim of its batch (None: a skipped step)."""
        if self.bar is not None:
            if bits_per_dim is not None:
                self.bar.set_postfix_str(f"{bits_per_dim:.3f} bits/dim", refresh=False)
            self.bar.update()
        elif self.enabled and (step % self.log_every == 0 or step == self.total):
            rate = (step - self._start_step) / max(time.perf_counter() - self._start, 1e-9)
            value = "" if bits_per_dim is None else f", {bits_per_dim:.3f} bits/dim"
            self.stream.write(
                f"{self.description}: step {step}/{self.total}{value} ({rate:.2f} steps/s)\n"
            )
            self.stream.flush()

    def write(self, message):
        """Print a message on its own line (above the bar on a terminal)."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            self.stream.write(message + "\n")
            self.stream.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _is_terminal(stream):
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
