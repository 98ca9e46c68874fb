"""What every part shares and nothing else: errors a person can act on, file helpers, text folding."""
