"""Model implementations (VGGT, DA3), their configs, reference-config mapping and checkpoint loading."""
