"""Filter Grafting: weight entropy, the α rule, in-memory and on-disk grafting, entropy reports."""
