"""Presentation: paper figures, the report, the neuron card."""
