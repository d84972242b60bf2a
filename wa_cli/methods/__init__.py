"""The techniques: average (SWA), EMA, Filter Grafting and BatchNorm re-estimation."""
