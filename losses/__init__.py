"""Loss functions on hidden states and log-probabilities, built on the reprkit core."""
