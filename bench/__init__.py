"""The benchmark: Switchboard against direct upstream and bare pass-throughs, in one run."""
