"""Evaluation of checkpoints and the predictor of which SFT checkpoint is best after RL."""
