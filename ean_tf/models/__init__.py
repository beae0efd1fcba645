"""Backbones, the batch graph, the GCN head and the EAN model."""
