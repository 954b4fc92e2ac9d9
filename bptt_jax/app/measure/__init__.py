"""The work of ``check``, ``bench``, ``diagnose``: the hand gradients checked, timed, studied."""
