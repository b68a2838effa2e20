"""OpenMMLab modules of repnas_mm (layer 3): registered on import."""
