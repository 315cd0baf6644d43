"""The HTTP surface: one module per endpoint family; all real work is the gateway's."""
