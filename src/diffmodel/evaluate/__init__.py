"""Evaluate diff models: held-out loss, edit accuracy, HumanEval bug fixing, and the sandbox they run code in."""
