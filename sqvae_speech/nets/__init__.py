"""Neural network building blocks (speech; vision later)."""
