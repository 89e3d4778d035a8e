"""Image work around the network: person detection, overlay, crop reuse, carrying a parse."""
