"""The one error type that reaches users as a single line instead of a traceback."""


class UserError(ValueError):
    """Bad input from the user: a flag, a file or a dataset.

    The message names the flag or file, what was expected and what was received. The command
    line prints it as one line on stderr and exits with status 2.
    """


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the command line exits with status 3."""


class AccuracyBelowMinimum(RuntimeError):
    """The final test accuracy is below --assert_min_accuracy; the command line exits with
    status 4 and exports nothing."""
