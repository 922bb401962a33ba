"""Training: recogniser and generator pretraining, the PMMTalk trainer, evaluation."""
