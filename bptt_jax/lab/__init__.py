"""The gradient-flow lab: measuring vanishing and exploding gradients, the delay task."""
