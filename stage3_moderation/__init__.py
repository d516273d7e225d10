"""Stage 3: the multimodal moderation service (weeks 9-11)."""
