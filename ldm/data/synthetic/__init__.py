"""Synthetic egocentric clips for the embedded small model: scenes, camera motion, hands, and the datasets made of them."""
