"""The human parser: engines that run the M2FP network, the agreement gate, int8 calibration."""
