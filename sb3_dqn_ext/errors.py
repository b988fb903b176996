"""The error classes of sb3-dqn-ext."""


class ScratchDQNError(ValueError, AssertionError):
    """
    A hyperparameter, space or input that ScratchDQN cannot work with.

    It derives from both ``ValueError`` and ``AssertionError`` so that code written against SB3's ``assert``-based
    checks (``except AssertionError``) and code that expects ``ValueError`` both still catch it.
    """


class DivergenceError(ScratchDQNError):
    """Training produced a NaN or infinite loss, reward or observation."""
