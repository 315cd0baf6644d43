"""The admin API: targets, keys, teams."""
