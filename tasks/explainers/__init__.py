"""Explanations of flagged samples: IG with explicit baselines, EDDA, latent counterfactuals."""
