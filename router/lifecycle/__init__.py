"""The process around the app: reloading its config, and the signals that drain or reload it."""
