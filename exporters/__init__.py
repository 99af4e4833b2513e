"""File formats for fixed-topology animated meshes: USD, Alembic, point caches, mesh sequences, glTF."""
