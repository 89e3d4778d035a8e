"""The bottom layer: data types, errors, metrics and heap tuning that every other layer uses."""
