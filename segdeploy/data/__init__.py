"""Data without torch: the synthetic road-scene renderer and labelled samples for the gates."""
