"""Training loops and data generation: the synthetic head world, the head model, encoders and regressor."""
