"""callwatch conversion: run folder -> verified int8 TFLite model bundle."""
