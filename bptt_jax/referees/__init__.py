"""The referees: autodiff and finite differences, against which the hand gradients are checked."""
