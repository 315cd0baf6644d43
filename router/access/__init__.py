"""Who may call: keys, teams, the models they may use, their limits; the guard the API calls."""
