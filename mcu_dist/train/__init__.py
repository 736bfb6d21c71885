"""Training: supervised fitting, reference models, the MCU curve-training loop."""
