"""Active learning: the round-by-round state of one repeat, kept in a JSON manifest."""
